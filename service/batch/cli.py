"""`sentiment-score`: batch scoring of files too big to hold in memory, with resume after a crash.

    sentiment-score reviews.jsonl --output scored.jsonl
    sentiment-score reviews.parquet -o scored.csv --keep-fields title --diagnostics --resume
    cat reviews.jsonl | sentiment-score - > scored.jsonl
    sentiment-score s3://bucket/reviews/ -o s3://bucket/scored/ --input-format parquet --engine ray --ray-address auto

This module owns the options (turned into one `Job`), the model lookup and the exit codes: 0 done, 1 stopped on a
bad row under `--on-error fail`, 2 usage or input errors, 3 the Ray job failed otherwise, 130 interrupted
(resumable). The local engine is service/batch/local.py, the Ray engine service/batch/ray.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from service.artifacts import ArtifactError
from service.batch.errors import InputError, JobError, RowFailure
from service.batch.job import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_TEXT_CHARS,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    Job,
    input_format,
    output_format,
)
from service.batch.local import run_local
from service.batch.readers import default_max_line_bytes
from service.batch.summary import print_summary
from service.batch.writers import atomic_write_text
from service.contract import DEFAULT_MODEL_NAME, DEFAULT_MODEL_ROOT
from service.exceptions import UnknownModel
from service.registry import ModelRegistry
from service.runtime import CALL_TOKENS, ModelRuntime, ProviderError


def resolve_model(model_dir: str | None, name: str | None) -> Path:
    """The artifact to load: `model_dir` (an artifact or a folder of them; default: the repo's exported/), then the
    one named `name` (folder or manifest name), else `imdb-lstm` if present, else the first: the service's lookup
    (`ModelRegistry.locate`), with its errors as input errors."""
    root = Path(model_dir) if model_dir else DEFAULT_MODEL_ROOT
    try:
        return ModelRegistry.locate(root, name)
    except ArtifactError as exc:
        hint = "" if model_dir else " (train and export one with `make train`, or pass --model-dir)"
        raise InputError(f"{exc}{hint}") from exc
    except UnknownModel as exc:
        raise InputError(str(exc)) from exc


EXIT_STATUS = """exit status:
  0    done (bad rows under --on-error skip are written with an error and still exit 0)
  1    stopped on a bad row under --on-error fail (no output file written)
  2    usage or input error: missing file, unreadable format, unknown field, an interrupted run in the way
  3    the Ray job failed for another reason (--engine ray)
  130  interrupted (Ctrl-C): rerun with --resume to continue"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sentiment-score",
        description="Score reviews in a file (or stdin) in batches.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_STATUS,
    )
    p.add_argument("input", help="input file; '-' reads JSONL from stdin")
    p.add_argument("-o", "--output", default="-", help="output file (.jsonl default, .csv, .parquet); '-' = stdout")
    p.add_argument("--input-format", choices=INPUT_FORMATS, help="override the format the extension implies")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, help="override the format the extension implies")
    model = p.add_argument_group("model")
    model.add_argument("--model-dir", help=f"an artifact directory or a folder of them (default: {DEFAULT_MODEL_ROOT})")
    model.add_argument("--model", help=f"which artifact in that folder, by name (default: {DEFAULT_MODEL_NAME} if present)")
    model.add_argument("--providers", help="onnxruntime execution providers, e.g. 'cuda,cpu' (default: CUDA if present)")
    model.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores locally, 1 per Ray actor)"
    )
    rows = p.add_argument_group("rows")
    rows.add_argument("--text-field", default="text", help="field holding the review (default: text)")
    rows.add_argument("--id-field", default=None, help="field holding the row id (default: id; the row number if absent)")
    rows.add_argument("--keep-fields", default="", help="comma-separated input fields to copy to the output")
    rows.add_argument(
        "--diagnostics",
        action="store_true",
        help="add top positive/negative tokens, unknown share and the mean forget/update gate",
    )
    rows.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="bad rows: written with an 'error' field (skip, default) or stop the job (fail, exit 1)",
    )
    rows.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_MAX_TEXT_CHARS,
        help=f"longer texts are bad rows (default: {DEFAULT_MAX_TEXT_CHARS:,}, the HTTP service's limit)",
    )
    rows.add_argument(
        "--max-line-bytes",
        type=int,
        default=None,
        help="longer lines (JSONL, CSV, text) are bad rows, never read whole (default: 1 MiB, or 8 "
        "bytes per --max-text-chars if more)",
    )
    job = p.add_argument_group("job")
    job.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    job.add_argument("--restart", action="store_true", help="discard an interrupted run's partial output and start over")
    job.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="rows read, scored and checkpointed at once")
    job.add_argument("--batch-size", type=int, default=64, help="rows per onnxruntime call, at most (default: 64)")
    job.add_argument(
        "--max-batch-tokens",
        type=int,
        default=CALL_TOKENS,
        help=f"padded tokens per onnxruntime call, at most (default: {CALL_TOKENS}, sized for CPU caches; a GPU may "
        "want more); a longer text still gets a call of its own",
    )
    job.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr")
    job.add_argument("--summary-json", help="also write the end-of-job summary to this file")
    ray = p.add_argument_group("ray")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="run here (default) or on Ray Data")
    ray.add_argument("--ray-address", help="existing Ray cluster ('auto', 'ray://host:10001'); default: a local Ray")
    ray.add_argument("--ray-concurrency", type=int, help="scoring actors (default: the cluster's CPUs minus one)")
    ray.add_argument(
        "--ray-model-path",
        action="store_true",
        help="workers load --model-dir from their own filesystem instead of receiving the artifact's bytes",
    )
    return p


def make_job(args: argparse.Namespace) -> Job:
    """The options, checked (usage errors before the input or the model are touched), as one `Job`."""
    if args.chunk_size < 1 or args.batch_size < 1 or args.max_batch_tokens < 1:
        raise InputError("--chunk-size, --batch-size and --max-batch-tokens must be at least 1")
    if args.max_text_chars < 1 or (args.max_line_bytes is not None and args.max_line_bytes < 1):
        raise InputError("--max-text-chars and --max-line-bytes must be at least 1")
    if args.resume and args.restart:
        raise InputError("--resume and --restart contradict each other")
    if args.output == "-" and (args.resume or args.restart):
        raise InputError("--resume needs --output FILE: stdout cannot be continued")
    if args.input == "-" and args.resume:
        raise InputError("--resume needs an input file: stdin cannot be read again")
    fmt_in, fmt_out = input_format(args.input, args.input_format), output_format(args.output, args.output_format)
    if fmt_in == "text" and args.id_field is not None:
        raise InputError("plain-text input has no fields: its ids are line numbers (drop --id-field)")
    if args.output != "-" and "://" not in args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise InputError(f"output directory {out.parent} does not exist")
    job = Job(
        input=args.input,
        output=args.output,
        input_format=fmt_in,
        output_format=fmt_out,
        model=resolve_model(args.model_dir, args.model),
        text_field=args.text_field,
        id_field=args.id_field or "id",
        id_explicit=args.id_field is not None,
        keep_fields=list(dict.fromkeys(f.strip() for f in args.keep_fields.split(",") if f.strip())),
        diagnostics=args.diagnostics,
        on_error=args.on_error,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        resume=args.resume,
        restart=args.restart,
        max_text_chars=args.max_text_chars,
        max_line_bytes=args.max_line_bytes or default_max_line_bytes(args.max_text_chars),
        quiet=args.quiet,
        summary_json=args.summary_json,
        providers=args.providers,
        threads=args.threads,
        ray_address=args.ray_address,
        ray_concurrency=args.ray_concurrency,
        ray_model_path=args.ray_model_path,
    )
    job.refuse_writing_over_input()
    return job


def run(job: Job, engine: str) -> dict:
    """Run the job on `engine`; returns its summary."""
    if engine == "ray":
        from service.batch import ray

        return ray.run_job(job)
    rt = ModelRuntime(job.model, providers=job.providers, intra_op_threads=job.threads or 0)
    job.set_columns(rt.manifest)
    return run_local(job, rt)


def fail(message: str) -> None:
    print(f"sentiment-score: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = make_job(args)
        result = run(job, args.engine)
    except (InputError, ArtifactError, ProviderError) as exc:
        fail(str(exc))
        return 2
    except RowFailure as exc:
        fail(f"{exc} (--on-error fail{'; no output file written' if args.output != '-' else ''})")
        return 1
    except JobError as exc:
        fail(str(exc))
        return 3
    except KeyboardInterrupt:
        resumable = args.output != "-"
        fail("interrupted" + ("; rerun the same command with --resume to continue" if resumable else ""))
        return 130
    except BrokenPipeError:  # e.g. `sentiment-score big.jsonl | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:  # unwritable output, a full disk: what a checkpoint already holds stays resumable
        fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return 2
    if args.summary_json:
        atomic_write_text(Path(args.summary_json), json.dumps(result, indent=2) + "\n")
    if not args.quiet:
        print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
