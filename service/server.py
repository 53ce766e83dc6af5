"""`sentiment-serve`: run the HTTP service with uvicorn.

    sentiment-serve [--host 127.0.0.1] [--port 8000] [--model-dir DIR] [--workers N]

Every other setting comes from `SENTIMENT_*` environment variables (service/settings.py). The models are loaded and
verified before uvicorn starts, so a missing, corrupt or mismatched artifact ends the command with one line naming
the file and exit status 2, before any port is opened. SIGINT/SIGTERM stop it gracefully: uvicorn stops accepting,
lets in-flight requests finish (up to --graceful-timeout seconds), then the lifespan stops the batchers.

--workers N (or SENTIMENT_WORKERS; default: one per usable core) runs N processes behind the one port, each with its
own models and micro-batcher; service/workers.py supervises them (drain on SIGTERM, replace a crashed worker).

Exit status:
  0  stopped by SIGTERM/SIGINT after draining
  1  the server started but could not run (a worker failed during start-up, or did not stop cleanly)
  2  invalid settings or model artifacts (one line names the variable or the file)
  3  cannot listen on --host/--port (address already in use, no permission)
"""

from __future__ import annotations

import argparse
import gc
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
from service.runtime import ProviderError, release_freed_memory
from service.settings import Settings
from service.workers import Supervisor, WorkerOptions, bind_socket, usable_cores


def _settings_error(exc: ValidationError) -> str:
    # A field's error names its variable; a check across fields (no loc) names the variables in its message.
    def one(e) -> str:
        msg = e["msg"].removeprefix("Value error, ")
        return f"SENTIMENT_{'_'.join(map(str, e['loc'])).upper()}: {msg}" if e["loc"] else msg

    return "; ".join(one(e) for e in exc.errors())


def main(argv: list[str] | None = None) -> int:
    # Each tokenizing call runs on the one thread that made it (ServiceState.tokenizer_pool), not on a Rayon pool
    # as wide as the machine: a max-size batch of hostile text then takes one core, not all of them, and the event
    # loop keeps a core to answer everyone else. Set before the tokenizers are loaded; an explicit value wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="sentiment-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model-dir", help="an artifact directory or a folder of them (default: SENTIMENT_MODEL_ROOT, else exported/)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--graceful-timeout", type=float, default=10.0, help="seconds in-flight requests get on stop")
    parser.add_argument(
        "--workers",
        type=int,
        help=f"processes behind the port (default: SENTIMENT_WORKERS, else one per usable core: {usable_cores()} here)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in (("model_root", args.model_dir), ("workers", args.workers)) if v is not None}
    try:
        settings = Settings(**overrides)
        registry = ModelRegistry.load(settings)
    except ValidationError as exc:
        print(f"sentiment-serve: error: invalid settings: {_settings_error(exc)}", file=sys.stderr)
        return 2
    except (ArtifactError, ProviderError) as exc:
        print(f"sentiment-serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    # Bound here, before any lifespan runs, so a busy port is one line and exit 3, never a "ready" log first.
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"sentiment-serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    workers = settings.workers or usable_cores()
    if workers > 1:
        del registry  # each worker loads its own; this copy only proved the artifacts good
        gc.collect()  # its sessions are freed now, not at some later collection, and their memory returned
        release_freed_memory()
        if settings.intra_op_threads == 0:  # "every core" per process would make N processes fight over them
            os.environ["SENTIMENT_INTRA_OP_THREADS"] = str(max(1, usable_cores() // workers))
        options = WorkerOptions({**overrides, "workers": workers}, args.log_level, args.graceful_timeout, workers)
        return Supervisor(sock, options).run()
    app = create_app(settings, registry)
    config = uvicorn_config(
        app, settings, log_level=args.log_level, lifespan="on", timeout_graceful_shutdown=args.graceful_timeout, access_log=False
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal once it has shut down gracefully; with the default handlers in place that
    # would kill the process (status -15, or a KeyboardInterrupt traceback). A clean stop should exit 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's own exit when the lifespan failed (its status 3 would read as "cannot listen")
        return 1
    finally:
        sock.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
