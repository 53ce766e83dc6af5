"""`sentiment-serve`: run the HTTP service with uvicorn.

    sentiment-serve [--host 127.0.0.1] [--port 8000] [--model-dir DIR]

Every other setting comes from `SENTIMENT_*` environment variables (service/settings.py). The models are loaded and
verified before uvicorn starts, so a missing, corrupt or mismatched artifact ends the command with one line naming
the file and exit status 2, before any port is opened. SIGINT/SIGTERM stop it gracefully: uvicorn stops accepting,
lets in-flight requests finish (up to --graceful-timeout seconds), then the lifespan stops the batchers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.artifacts import ArtifactError
from service.http_limits import uvicorn_config
from service.registry import ModelRegistry
from service.runtime import ProviderError
from service.settings import Settings


def _settings_error(exc: ValidationError) -> str:
    return "; ".join(f"SENTIMENT_{'_'.join(map(str, e['loc'])).upper() or 'SETTINGS'}: {e['msg']}" for e in exc.errors())


def main(argv: list[str] | None = None) -> int:
    # Each tokenizing call runs on the one thread that made it (ServiceState.tokenizer_pool), not on a Rayon pool
    # as wide as the machine: a max-size batch of hostile text then takes one core, not all of them, and the event
    # loop keeps a core to answer everyone else. Set before the tokenizers are loaded; an explicit value wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="sentiment-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-dir", help="an artifact directory or a folder of them (default: SENTIMENT_MODEL_ROOT, "
                                            "else exported/)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--graceful-timeout", type=float, default=10.0, help="seconds in-flight requests get on stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(**({"model_root": args.model_dir} if args.model_dir else {}))
        registry = ModelRegistry.load(settings)
    except ValidationError as exc:
        print(f"sentiment-serve: error: invalid settings: {_settings_error(exc)}", file=sys.stderr)
        return 2
    except (ArtifactError, ProviderError) as exc:
        print(f"sentiment-serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    app = create_app(settings, registry)
    config = uvicorn_config(app, settings, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                            timeout_graceful_shutdown=args.graceful_timeout, access_log=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default handlers in place that
    # would kill the process (status -15, or a KeyboardInterrupt traceback). A clean stop should exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    # uvicorn returns normally when it could not bind or the lifespan failed; that is a failed start.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
