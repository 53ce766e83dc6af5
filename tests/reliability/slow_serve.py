"""`sentiment-serve` (service.server.main, unchanged) with slow model calls, so tests can hold requests in flight
for as long as they need, deterministically:

    SLOW_CALL_S=1.5 SLOW_MARKS=/tmp/marks python tests/reliability/slow_serve.py --port 8123 --model-dir DIR

Every onnxruntime scoring call for texts of SLOW_MIN_TOKENS+ tokens, and every diagnostics call, sleeps SLOW_CALL_S
seconds first and appends a line ("batch N" or "diagnose") to the SLOW_MARKS file as it starts. Start-up's warm-up
and /readyz probes (1-2 tokens) are not slowed.
"""

from __future__ import annotations

import os
import sys
import time

from service.runtime import ModelRuntime
from service.server import main

DELAY = float(os.environ.get("SLOW_CALL_S", "1"))
MIN_TOKENS = int(os.environ.get("SLOW_MIN_TOKENS", "3"))
MARKS = os.environ.get("SLOW_MARKS")
_run_batch, _diagnose = ModelRuntime.run_batch, ModelRuntime.diagnose


def _mark(line: str) -> None:
    if MARKS:
        with open(MARKS, "a") as fh:
            fh.write(line + "\n")


def run_batch(self, encoded):
    if max(e.num_tokens for e in encoded) >= MIN_TOKENS:
        _mark(f"batch {len(encoded)}")
        time.sleep(DELAY)
    return _run_batch(self, encoded)


def diagnose(self, *args, **kwargs):
    _mark("diagnose")
    time.sleep(DELAY)
    return _diagnose(self, *args, **kwargs)


ModelRuntime.run_batch, ModelRuntime.diagnose = run_batch, diagnose

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
