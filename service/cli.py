"""`sentiment-score`: batch scoring of files too big to hold in memory, with resume after a crash.

    sentiment-score reviews.jsonl --output scored.jsonl
    sentiment-score reviews.parquet -o scored.csv --keep-fields title --diagnostics --resume
    cat reviews.jsonl | sentiment-score - > scored.jsonl
    sentiment-score s3://bucket/reviews/ -o s3://bucket/scored/ --input-format parquet --engine ray --ray-address auto

This module owns the job: options, the model lookup, the local streaming loop (read a chunk, score it in
length-sorted batches, write it back in input order, checkpoint), the end-of-job summary and the exit codes:
0 done, 1 stopped on a bad row under `--on-error fail`, 2 usage or input errors, 3 the Ray job failed otherwise,
130 interrupted (resumable).
Formats and crash-safe writing live in service/batch_io.py; the Ray engine in service/ray_predictor.py.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from service import batch_io
from service.artifacts import ArtifactError, discover, load_manifest
from service.batch_io import InputError, InputRow, JobError, RowFailure
from service.runtime import ModelRuntime, ProviderError
from service.settings import Settings

DEFAULT_MODEL_ROOT = Path(__file__).resolve().parents[1] / "exported"
DEFAULT_MODEL_NAME = "imdb-lstm"
# A chunk is the unit of reading, checkpointing and resuming: big enough that length-sorting inside it leaves
# little padding and per-chunk fsyncs cost nothing, small enough that a kill loses seconds of work.
DEFAULT_CHUNK_SIZE = 4096
MAX_ERROR_EXAMPLES = 10
# The HTTP service's limit (413 over it): the same texts are scored, or refused, by both.
DEFAULT_MAX_TEXT_CHARS = Settings.model_fields["max_text_chars"].default


def resolve_model(model_dir: str | None, name: str | None) -> Path:
    """The artifact to load: `model_dir` (an artifact or a folder of them; default: the repo's exported/), then the
    one named `name` (folder or manifest name), else `imdb-lstm` if present, else the first."""
    root = Path(model_dir) if model_dir else DEFAULT_MODEL_ROOT
    try:
        found = discover(root)
    except ArtifactError as exc:
        hint = "" if model_dir else " (train and export one with `make train`, or pass --model-dir)"
        raise InputError(f"{exc}{hint}") from exc
    names = {}
    for path in found:
        names[path.name] = path
        try:
            names.setdefault(load_manifest(path, verify=False)["name"], path)
        except ArtifactError:
            pass  # loading it later reports the problem, if this is the one chosen
    if name:
        if name not in names:
            raise InputError(f"no model named {name!r} under {root} (found: {', '.join(sorted(names))})")
        return names[name]
    return names.get(DEFAULT_MODEL_NAME, found[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentiment-score", description="Score reviews in a file (or stdin) in batches.")
    p.add_argument("input", help="input file; '-' reads JSONL from stdin")
    p.add_argument("-o", "--output", default="-", help="output file (.jsonl default, .csv, .parquet); '-' = stdout")
    p.add_argument("--input-format", choices=batch_io.INPUT_FORMATS, help="override the format the extension implies")
    p.add_argument("--output-format", choices=batch_io.OUTPUT_FORMATS, help="override the format the extension implies")
    model = p.add_argument_group("model")
    model.add_argument("--model-dir", help=f"an artifact directory or a folder of them (default: {DEFAULT_MODEL_ROOT})")
    model.add_argument("--model", help=f"which artifact in that folder, by name (default: {DEFAULT_MODEL_NAME} if present)")
    model.add_argument("--providers", help="onnxruntime execution providers, e.g. 'cuda,cpu' (default: CUDA if present)")
    model.add_argument("--threads", type=int, default=None,
                       help="onnxruntime intra-op threads (default: all cores locally, 1 per Ray actor)")
    rows = p.add_argument_group("rows")
    rows.add_argument("--text-field", default="text", help="field holding the review (default: text)")
    rows.add_argument("--id-field", default=None, help="field holding the row id (default: id; the row number if absent)")
    rows.add_argument("--keep-fields", default="", help="comma-separated input fields to copy to the output")
    rows.add_argument("--diagnostics", action="store_true",
                      help="add top positive/negative tokens, unknown share and the mean forget/update gate")
    rows.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                      help="bad rows: written with an 'error' field (skip, default) or stop the job (fail, exit 1)")
    rows.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS,
                      help=f"longer texts are bad rows (default: {DEFAULT_MAX_TEXT_CHARS:,}, the HTTP service's limit)")
    rows.add_argument("--max-line-bytes", type=int, default=None,
                      help="longer lines (JSONL, CSV, text) are bad rows, never read whole (default: 1 MiB, or 8 "
                           "bytes per --max-text-chars if more)")
    job = p.add_argument_group("job")
    job.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    job.add_argument("--restart", action="store_true", help="discard an interrupted run's partial output and start over")
    job.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="rows read, scored and checkpointed at once")
    job.add_argument("--batch-size", type=int, default=64, help="rows per onnxruntime call")
    job.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr")
    job.add_argument("--summary-json", help="also write the end-of-job summary to this file")
    ray = p.add_argument_group("ray")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="run here (default) or on Ray Data")
    ray.add_argument("--ray-address", help="existing Ray cluster ('auto', 'ray://host:10001'); default: a local Ray")
    ray.add_argument("--ray-concurrency", type=int, help="scoring actors (default: the cluster's CPUs minus one)")
    ray.add_argument("--ray-model-path", action="store_true",
                     help="workers load --model-dir from their own filesystem instead of receiving the artifact's bytes")
    return p


@dataclass
class Job:
    input: str
    output: str
    input_format: str
    output_format: str
    text_field: str
    id_field: str
    id_explicit: bool
    keep_fields: list[str]
    diagnostics: bool
    on_error: str
    chunk_size: int
    batch_size: int
    resume: bool = False
    restart: bool = False
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_line_bytes: int = batch_io.MIN_MAX_LINE_BYTES
    columns: list[str] = field(default_factory=list)  # output columns, set once the model is known
    score_columns: list[str] = field(default_factory=list)  # the ones scoring fills: label .. diagnostics

    def identity(self, rt: ModelRuntime) -> dict:
        """What a resumed run must share with the interrupted one for the output to be the same. (The input's
        content is checked apart: the checkpoint's `input` fingerprint, see `batch_io.BoundedLines`.)"""
        src = {"input": self.input}
        if self.input != "-":
            src = {"input": str(Path(self.input).resolve()), "input_size": Path(self.input).stat().st_size}
        keys = ("input_format", "output_format", "text_field", "id_field", "keep_fields", "diagnostics", "chunk_size",
                "batch_size", "max_text_chars", "max_line_bytes")
        model = {"name": rt.name, "version": rt.version, "sha256": rt.manifest["files"]["model.onnx"].get("sha256")}
        return {**src, **{k: getattr(self, k) for k in keys}, "model": model}


def make_job(args: argparse.Namespace) -> Job:
    if args.chunk_size < 1 or args.batch_size < 1:
        raise InputError("--chunk-size and --batch-size must be at least 1")
    if args.max_text_chars < 1 or (args.max_line_bytes is not None and args.max_line_bytes < 1):
        raise InputError("--max-text-chars and --max-line-bytes must be at least 1")
    if args.resume and args.restart:
        raise InputError("--resume and --restart contradict each other")
    if args.output == "-" and (args.resume or args.restart):
        raise InputError("--resume needs --output FILE: stdout cannot be continued")
    if args.input == "-" and args.resume:
        raise InputError("--resume needs an input file: stdin cannot be read again")
    keep = list(dict.fromkeys(f.strip() for f in args.keep_fields.split(",") if f.strip()))
    job = Job(args.input, args.output, batch_io.input_format(args.input, args.input_format),
              batch_io.output_format(args.output, args.output_format), args.text_field, args.id_field or "id",
              args.id_field is not None, keep, args.diagnostics, args.on_error, args.chunk_size, args.batch_size,
              args.resume, args.restart, args.max_text_chars,
              args.max_line_bytes or batch_io.default_max_line_bytes(args.max_text_chars))
    if job.input_format == "text" and job.id_explicit:
        raise InputError("plain-text input has no fields: its ids are line numbers (drop --id-field)")
    if args.output != "-" and "://" not in args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise InputError(f"output directory {out.parent} does not exist")
    refuse_writing_over_input(args)
    return job


def _input_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the input: the file, or the file stdin was redirected from; None for a pipe."""
    try:
        st = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
    except (OSError, ValueError):  # missing (reported when it is opened), or no real stdin (as under pytest)
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def refuse_writing_over_input(args: argparse.Namespace) -> None:
    """Every file the job writes or replaces (OUTPUT, OUTPUT.partial, the checkpoint, the summary and their
    temporary files), compared with the input by inode, so that hard links, symlinks and other spellings count."""
    source = _input_identity(args.input)
    if source is None:
        return
    paths = []
    if args.output != "-" and "://" not in args.output:
        paths += [("the output", args.output), ("the output's partial file", args.output + ".partial"),
                  ("the output's parts", args.output + ".parts"),
                  ("the checkpoint", args.output + ".checkpoint.json"),
                  ("the checkpoint's temporary file", args.output + ".checkpoint.json.tmp")]
    if args.summary_json:
        paths += [("the summary", args.summary_json), ("the summary's temporary file", args.summary_json + ".tmp")]
    for role, path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue  # not there (yet), so not the input
        if (st.st_dev, st.st_ino) == source:
            raise InputError(f"{role}, {path}, is the input file ({args.input}): refusing to overwrite the input; "
                             "pick another --output or --summary-json")


def set_columns(job: Job, manifest: dict) -> None:
    clash = [f for f in job.keep_fields if f in batch_io.output_columns(manifest, job.diagnostics, [])]
    if clash:
        raise InputError(f"--keep-fields {clash[0]!r} clashes with the output column of the same name")
    job.columns = batch_io.output_columns(manifest, job.diagnostics, job.keep_fields)
    job.score_columns = batch_io.output_columns(manifest, job.diagnostics, [])[1:-1]


def check_fields(job: Job, columns: list[str] | None, source: str) -> None:
    if columns is None:
        return
    wanted = [job.text_field] + ([job.id_field] if job.id_explicit else []) + job.keep_fields
    missing = [f for f in wanted if f not in columns]
    if missing:
        raise InputError(f"{source}: no field {missing[0]!r} (fields: {', '.join(columns) or 'none'})")


def jsonl_columns(rows: list[InputRow]) -> list[str] | None:
    """Fields seen in the first chunk of a JSONL input (None when no row there could be read)."""
    seen: dict[str, None] = {}
    for row in rows:
        if row.values is not None:
            seen.update(dict.fromkeys(row.values))
    return list(seen) if seen else None


def row_id(row: InputRow, id_field: str):
    value = row.values.get(id_field) if row.values is not None else None
    return row.number if value is None or value == "" else value


@dataclass
class Tally:
    rows: int = 0
    errors: int = 0
    labels: Counter = field(default_factory=Counter)
    error_examples: list = field(default_factory=list)

    def state(self) -> dict:
        return {"rows": self.rows, "errors": self.errors, "labels": dict(self.labels),
                "error_examples": self.error_examples}

    @classmethod
    def from_state(cls, state: dict) -> Tally:
        return cls(state["rows"], state["errors"], Counter(state["labels"]), state["error_examples"])


def score_chunk(rt: ModelRuntime, rows: list[InputRow], job: Job, tally: Tally) -> list[dict]:
    """Score one chunk (length-sorted batches inside `score_texts`) and return its records in input order."""
    readable = [i for i, row in enumerate(rows) if row.error is None]
    scored = batch_io.score_texts(rt, [rows[i].values.get(job.text_field) for i in readable], job.batch_size,
                                  job.diagnostics, job.text_field, job.max_text_chars)
    results: list[dict] = [{"error": row.error} for row in rows]
    for i, result in zip(readable, scored):
        results[i] = result
    records = []
    for row, result in zip(rows, results):
        record = {"id": row_id(row, job.id_field)}
        for name in job.score_columns:
            record[name] = result.get(name)
        for name in job.keep_fields:
            record[name] = row.values.get(name) if row.values is not None else None
        error = result.get("error")
        if error:
            if job.on_error == "fail":
                raise RowFailure(f"{row.where}: {error}")
            record["error"] = error
            tally.errors += 1
            if len(tally.error_examples) < MAX_ERROR_EXAMPLES:
                tally.error_examples.append({"row": row.number, "where": row.where, "error": error})
        else:
            tally.labels[record["label"]] += 1
        records.append(record)
    tally.rows += len(rows)
    return records


def progress_bar(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=" rows", unit_scale=True, file=sys.stderr, disable=not enabled,
                mininterval=0.5, smoothing=0.05, dynamic_ncols=True)


def run_local(job: Job, rt: ModelRuntime, quiet: bool) -> dict:
    """The streaming loop; returns the summary. Raises InputError, RowFailure or KeyboardInterrupt (resumable)."""
    if job.output != "-" and Path(job.output).is_dir():
        raise InputError(f"{job.output} is a directory; the local engine writes one file")
    wanted = [job.text_field, job.id_field, *job.keep_fields]
    reader = batch_io.open_reader(job.input, job.input_format, job.text_field, wanted, job.max_line_bytes)
    writer = None
    try:
        check_fields(job, reader.columns, job.input)
        checkpoint = None if job.output == "-" else batch_io.Checkpoint(job.output)
        identity = job.identity(rt)
        previous = checkpoint.load() if checkpoint else None
        writer = batch_io.open_writer(job.output, job.output_format, job.columns)
        if previous is not None and not job.resume:
            if not job.restart:
                how = "--restart to discard it (stdin cannot be read again)" if job.input == "-" else (
                    "--resume to continue it, or --restart to discard it")
                raise InputError(f"{checkpoint.path} records an interrupted run into {job.output}: rerun with {how}")
            writer.discard()
            checkpoint.remove()
            previous = None
        if previous is not None:
            different = [k for k in identity if previous["job"].get(k) != identity[k]]
            if different:
                k = different[0]
                raise InputError(f"{checkpoint.path} belongs to a different job ({k}: {previous['job'].get(k)!r} "
                                 f"then, {identity[k]!r} now); rerun with the same options, or --restart")
        tally = Tally.from_state(previous["tally"]) if previous else Tally()
        skip = tally.rows
        if previous is not None and previous.get("complete"):
            writer.recover_finish(previous["writer"])
            checkpoint.remove()
            return summary(job, rt, tally, 0, 0.0, skip)

        started = time.perf_counter()
        rows = reader.rows(skip, previous.get("input") if previous else None)
        chunk = _take(rows, job.chunk_size)
        if job.input_format == "jsonl" and not previous:
            check_fields(job, jsonl_columns(chunk), f"{job.input} (first {len(chunk)} rows)")
        state = writer.open(previous["writer"] if previous else None)
        if checkpoint:
            checkpoint.save({"job": identity, "tally": tally.state(), "writer": state, "complete": False,
                             "input": reader.fingerprint()})
        show = not quiet and sys.stderr.isatty()
        with progress_bar(reader.count() if show else None, skip, show) as bar:
            while chunk:
                records = score_chunk(rt, chunk, job, tally)
                state = writer.write(records)
                if checkpoint:  # only after the chunk is on disk (write fsyncs), so a kill never loses a row
                    checkpoint.save({"job": identity, "tally": tally.state(), "writer": state, "complete": False,
                                     "input": reader.fingerprint()})
                bar.update(len(chunk))
                chunk = _take(rows, job.chunk_size)
            if show and bar.total != bar.n:  # a CSV count is an estimate (quoted fields may span lines)
                bar.total = bar.n
                bar.refresh()
        if checkpoint:
            checkpoint.save({"job": identity, "tally": tally.state(), "writer": state, "complete": True})
        writer.finish()
        if checkpoint:
            checkpoint.remove()
        return summary(job, rt, tally, tally.rows - skip, time.perf_counter() - started, skip)
    except RowFailure:
        if writer is not None and job.output != "-":
            writer.discard()  # the job failed by policy; resuming would stop at the same row again
            batch_io.Checkpoint(job.output).remove()
        raise
    finally:
        if writer is not None:
            writer.close()
        reader.close()


def _take(rows, n: int) -> list[InputRow]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == n:
            break
    return chunk


def summary(job: Job, rt: ModelRuntime, tally: Tally, rows_this_run: int, elapsed: float, resumed_from: int,
            engine: str = "local") -> dict:
    return {
        "status": "done", "engine": engine, "input": job.input, "output": job.output,
        "model": {"name": rt.name, "version": rt.version, "directory": str(rt.directory)},
        "rows": tally.rows, "scored": tally.rows - tally.errors, "errors": tally.errors,
        "labels": {label: tally.labels.get(label, 0) for label in rt.labels},
        "error_examples": tally.error_examples, "resumed_from_row": resumed_from,
        "rows_this_run": rows_this_run, "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows_this_run / elapsed, 1) if elapsed > 0 else None,
    }


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def print_summary(s: dict) -> None:
    labels = ", ".join(f"{label} {n:,}" for label, n in s["labels"].items())
    if s["rows_this_run"]:  # the rate from the counts, not the rounded `rows_per_s` (3 rows in 90 s round to 0.0)
        per_s = s["rows_this_run"] / s["elapsed_s"] if s["elapsed_s"] else 0.0
        rate = f"{per_s:,.{1 if per_s >= 1 else 3}f} rows/s" if per_s else _plural(s["rows_this_run"], "row") + " this run"
    else:
        rate = "no rows left to score this run"
    resumed = f" (resumed after row {s['resumed_from_row']:,})" if s["resumed_from_row"] else ""
    print(f"sentiment-score: {_plural(s['rows'], 'row')}{resumed}, {_plural(s['errors'], 'error')}; {labels}; {rate}, "
          f"{s['elapsed_s']:.1f} s -> {s['output'] if s['output'] != '-' else 'stdout'}", file=sys.stderr)
    shown = s["error_examples"][:3]
    for example in shown:
        print(f"  {example['where']}: {example['error']}", file=sys.stderr)
    if s["errors"] > len(shown):
        listed = len(s["error_examples"])
        more = f" (the first {listed:,} in --summary-json)" if listed > len(shown) else ""
        print(f"  +{s['errors'] - len(shown):,} more{more}", file=sys.stderr)


def fail(message: str) -> None:
    print(f"sentiment-score: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = make_job(args)
        if args.engine == "ray":
            from service import ray_predictor

            result = ray_predictor.run_job(job, args)
        else:
            rt = ModelRuntime(resolve_model(args.model_dir, args.model), providers=args.providers,
                              intra_op_threads=args.threads or 0)
            set_columns(job, rt.manifest)
            result = run_local(job, rt, args.quiet)
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
        batch_io.atomic_write_text(Path(args.summary_json), json.dumps(result, indent=2) + "\n")
    if not args.quiet:
        print_summary(result)
    return 0



if __name__ == "__main__":  # `python -m service.cli`, as the tests run it in a subprocess
    sys.exit(main())
