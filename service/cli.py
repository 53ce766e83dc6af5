"""`python -m service.cli`: the old home of `sentiment-score`, kept as a shim; the command is service/batch/cli.py."""

from __future__ import annotations

import sys

from service.batch.cli import main, resolve_model

__all__ = ["main", "resolve_model"]

if __name__ == "__main__":
    sys.exit(main())
