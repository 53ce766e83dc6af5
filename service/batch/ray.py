"""Scoring on Ray Data: `SentimentPredictor`, a callable class for `Dataset.map_batches` that loads the artifact once
per actor and adds the score columns to each batch, and `run_job`, the job behind `sentiment-score --engine ray`
(Ray's own readers and writers, on a local Ray started for the job or on an existing cluster).

    ds = ray.data.read_parquet("s3://bucket/reviews/")
    ds = ds.map_batches(SentimentPredictor, fn_constructor_kwargs={"artifact": ray.put(pack_artifact(model_dir))},
                        concurrency=4, batch_size=1024, batch_format="pyarrow")

Scoring is `scoring.score_texts`, the local engine's path, so both engines give the same rows. Ray (and pandas,
which comes with it) is imported only inside functions: the base install does not need the `ray` extra.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from service.artifacts import load_manifest
from service.batch.columns import ERROR_COLUMN, arrow_types, score_columns
from service.batch.errors import InputError, JobError, RowFailure
from service.batch.job import Job
from service.batch.scoring import score_texts
from service.batch.summary import Tally, summary
from service.runtime import CALL_TOKENS, ModelRuntime

ROW_COLUMN = "__row"  # the 1-based row number the CLI job zips onto the input (Ray has no row index of its own)


def pack_artifact(directory: str | Path) -> dict[str, bytes]:
    """The artifact's files (manifest.json and every file it lists) as bytes, to ship through the object store to
    workers that cannot see `directory`. Workers check them against the manifest's sha256 on load."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    return {name: (directory / name).read_bytes() for name in ["manifest.json", *manifest["files"]]}


class SentimentPredictor:
    """`ds.map_batches(SentimentPredictor, fn_constructor_kwargs={"artifact": ...}, concurrency=N,
    batch_format="pyarrow" | "pandas" | "numpy")`: returns each batch, in the same format, with columns label,
    score (P(positive)), num_tokens, truncated and error (null for rows scored), plus the compact diagnostics with
    `diagnostics=True`. `artifact` is a directory the workers can read, or `pack_artifact(...)`'s dict (or an
    ObjectRef of it), which each actor writes to a temporary directory once."""

    def __init__(
        self,
        artifact,
        text_field: str = "text",
        batch_size: int = 64,
        diagnostics: bool = False,
        threads: int = 1,
        providers: str | None = None,
        prefix: str = "",
        max_batch_tokens: int = CALL_TOKENS,
    ):
        self._tmp = None
        if type(artifact).__name__ == "ObjectRef":  # only when Ray Data did not resolve it for us
            import ray

            artifact = ray.get(artifact)
        if isinstance(artifact, dict):
            self._tmp = tempfile.TemporaryDirectory(prefix="sentiment-artifact-")  # removed with the actor
            for name, data in artifact.items():
                (Path(self._tmp.name) / name).write_bytes(data)
            artifact = self._tmp.name
        self.rt = ModelRuntime(artifact, providers=providers, intra_op_threads=threads)
        self.text_field, self.batch_size, self.diagnostics, self.prefix = text_field, batch_size, diagnostics, prefix
        self.max_batch_tokens = max_batch_tokens
        self.columns = [*score_columns(self.rt.manifest, diagnostics), ERROR_COLUMN]

    def __call__(self, batch):
        kind = type(batch).__module__.split(".")[0]
        names = (
            list(batch.keys()) if isinstance(batch, dict) else list(batch.column_names if kind == "pyarrow" else batch.columns)
        )
        clash = [self.prefix + c for c in self.columns if self.prefix + c in names]
        if clash:
            raise ValueError(f"the batch already has a column {clash[0]!r}; pass prefix= to name the score columns")
        if self.text_field not in names:
            raise ValueError(f"the batch has no column {self.text_field!r} (columns: {names})")
        if kind == "pyarrow":
            texts = batch.column(self.text_field).to_pylist()
        else:  # pandas marks missing values NaN; a missing text is a bad row, not a float
            texts = [None if isinstance(v, float) and math.isnan(v) else v for v in list(batch[self.text_field])]
        results = score_texts(
            self.rt, texts, self.batch_size, self.diagnostics, self.text_field, max_tokens=self.max_batch_tokens
        )
        values = {c: [r.get(c) for r in results] for c in self.columns}
        if kind == "pyarrow":
            import pyarrow as pa

            types = arrow_types()
            for c in self.columns:
                batch = batch.append_column(self.prefix + c, pa.array(values[c], type=types[c]))
            return batch
        if isinstance(batch, dict):
            import numpy as np

            out = dict(batch)
            for c in self.columns:
                column = np.empty(len(texts), dtype=object)
                column[:] = values[c]
                out[self.prefix + c] = column
            return out
        import pandas as pd

        # object columns keep None for the rows not scored (pandas would turn them into NaN)
        return batch.assign(**{self.prefix + c: pd.Series(values[c], index=batch.index, dtype=object) for c in self.columns})


# -- the CLI job ---------------------------------------------------------------------------------------------------
def _row_numbers(batch: dict) -> dict:
    return {ROW_COLUMN: batch["id"] + 1}


def _cli_records(table, id_field: str, columns: list[str], on_error: str, csv: bool):
    """The local engine's output rows: id (the id field, else the row number), the score columns, kept fields."""
    import pyarrow as pa

    rows = table.column(ROW_COLUMN).to_pylist()
    errors = table.column("error").to_pylist()
    if on_error == "fail":
        for row, error in zip(rows, errors):
            if error:
                raise RowFailure(f"row {row}: {error}")
    ids = table.column(id_field).to_pylist() if id_field in table.column_names else [None] * len(rows)
    ids = [row if value is None or value == "" else value for value, row in zip(ids, rows)]
    try:
        out = {"id": pa.array(ids)}
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # ids of mixed types: keep their text, as the local engine does
        out = {"id": pa.array([v if isinstance(v, str) else json.dumps(v) for v in ids])}
    for name in columns[1:]:
        column = table.column(name)
        if csv and pa.types.is_list(column.type):  # CSV cells hold lists as JSON, as the local engine writes them
            column = pa.array(
                [None if v is None else json.dumps(v, ensure_ascii=False) for v in column.to_pylist()], type=pa.string()
            )
        out[name] = column
    return pa.table(out)


def _read(rd, job, wanted: list[str]):
    import pyarrow as pa
    from pyarrow import csv as pacsv

    path = job.input
    if job.input_format == "jsonl":
        return rd.read_json(path, file_extensions=None)
    if job.input_format == "csv":  # CSV values stay strings, as in the local engine
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted})
        return rd.read_csv(path, convert_options=options, file_extensions=None)
    if job.input_format == "parquet":
        return rd.read_parquet(path, file_extensions=None)
    ds = rd.read_text(path, drop_empty_lines=False, file_extensions=None)
    return ds if job.text_field == "text" else ds.rename_columns({"text": job.text_field})


def _start_ray(ray, address: str | None, quiet: bool) -> bool:
    """Connect (or start a local Ray); True when this job started it and must shut it down."""
    if ray.is_initialized():
        return False
    runtime_env = None
    if address:  # workers on a cluster get this package's code; its dependencies must be on their image
        runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])]}  # service/
    ray.init(
        address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=not quiet, logging_level=logging.ERROR
    )
    return True


def _short(exc: BaseException) -> str:
    """`Type: message` of the exception a Ray task raised: Ray passes it on as text inside a remote traceback
    followed by retry advice, so take the last such line that is not Ray's own."""
    text = f"{exc}\n{getattr(exc, 'cause', None) or ''}"
    raised = [
        m
        for m in re.findall(r"^\s*([\w.]+(?:Error|Exception|Failure)): (.+)$", text, re.MULTILINE)
        if not m[0].startswith("ray.")
    ]
    if raised:
        kind, message = raised[-1]
        return f"{kind.rsplit('.', 1)[-1]}: {message.strip()}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def run_job(job: Job) -> dict:
    """`sentiment-score --engine ray`: read with Ray, score on `concurrency` actors, write OUTPUT as a directory of
    part files with Ray's writer (into OUTPUT.partial, renamed when complete for local paths). Returns the summary."""
    try:
        import ray
        import ray.data as rd
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'imdb-sentiment[ray]'") from None
    if job.resume or job.restart:
        raise InputError("--resume/--restart are for the local engine; a Ray job writes its output in one go")
    if job.input == "-" or job.output == "-":
        raise InputError("--engine ray reads and writes files (a directory of parts for the output), not stdin/stdout")
    remote_input = "://" in job.input
    if not remote_input and not Path(job.input).exists():
        raise InputError(f"input {job.input} does not exist")
    model_dir = job.model
    manifest = load_manifest(model_dir)  # verified here once, so a broken artifact fails before Ray starts
    job.set_columns(manifest)
    local_output = "://" not in job.output
    if local_output and Path(job.output).is_file():
        raise InputError(f"{job.output} is a file; --engine ray writes a directory of parts there")

    # Ray Data logs every failed task's remote traceback at ERROR; the job reports one short message instead.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    started_ray = _start_ray(ray, job.ray_address, job.quiet)
    started = time.perf_counter()
    try:
        ctx = rd.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows stay aligned with their row numbers, output in order
        ctx.enable_progress_bars = not job.quiet
        wanted = [job.text_field, job.id_field, *job.keep_fields]
        try:
            ds = _read(rd, job, wanted)
            columns = ds.columns()
            job.check_fields(columns, job.input)
            ds = ds.select_columns([c for c in dict.fromkeys(wanted) if c in columns])
            rows = ds.count()
        except InputError:
            raise
        except Exception as exc:  # Ray's readers fail the whole read on one bad line or type clash
            raise InputError(
                f"{job.input}: Ray cannot read it as {job.input_format} ({_short(exc)}); the local "
                "engine reports bad rows one by one"
            ) from None
        with warnings.catch_warnings():  # zip is deprecated from Ray 2.64 on; the pinned 2.60 has it
            warnings.simplefilter("ignore")
            ds = ds.zip(rd.range(rows).map_batches(_row_numbers, batch_format="numpy"))
        artifact = str(model_dir) if job.ray_model_path else ray.put(pack_artifact(model_dir))
        concurrency = job.ray_concurrency or max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
        ds = ds.map_batches(
            SentimentPredictor,
            batch_size=job.chunk_size,
            batch_format="pyarrow",
            compute=rd.ActorPoolStrategy(size=concurrency),
            num_cpus=1,
            fn_constructor_kwargs={
                "artifact": artifact,
                "text_field": job.text_field,
                "batch_size": job.batch_size,
                "max_batch_tokens": job.max_batch_tokens,
                "diagnostics": job.diagnostics,
                "threads": job.threads or 1,
                "providers": job.providers,
            },
        )
        ds = ds.map_batches(
            _cli_records,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={
                "id_field": job.id_field,
                "columns": job.columns,
                "on_error": job.on_error,
                "csv": job.output_format == "csv",
            },
        )
        try:
            ds = ds.materialize()
        except Exception as exc:  # Ray wraps the task's exception; find ours in the chain
            # Ray re-raises a task's exception as text (RayTaskError(UserCodeException)), so match its line.
            failure = re.search(r"RowFailure: (.+)", str(exc))
            if failure is not None:
                raise RowFailure(failure.group(1).strip()) from None
            raise JobError(f"the Ray job failed ({_short(exc)})") from None
        target = job.output + ".partial" if local_output else job.output
        if local_output:
            shutil.rmtree(target, ignore_errors=True)
        if job.output_format == "jsonl":  # 15 digits: pandas' most; scores match the local engine to 1e-15
            ds.write_json(target, force_ascii=False, double_precision=15)
        elif job.output_format == "csv":
            ds.write_csv(target)
        else:
            ds.write_parquet(target)
        if local_output:
            shutil.rmtree(job.output, ignore_errors=True)
            Path(target).rename(job.output)
        tally = Tally()
        for batch in ds.select_columns(["id", "label", "error"]).iter_batches(batch_format="pyarrow", batch_size=None):
            for id_, label, error in zip(*(batch.column(c).to_pylist() for c in ("id", "label", "error"))):
                if error:
                    tally.failed({"id": id_, "where": f"id {id_}", "error": error})
                else:
                    tally.scored(label)
    finally:
        if started_ray:
            ray.shutdown()
    elapsed = time.perf_counter() - started
    return summary(job, manifest, model_dir, tally, tally.rows, elapsed, engine="ray", ray_concurrency=concurrency)
