"""The local engine: the streaming loop behind `sentiment-score` without `--engine ray`.

Read a chunk, score it (length-sorted batches inside `scoring.score_texts`), write it back in input order, then
move the checkpoint forward; at most one chunk is in memory, and a kill at any moment loses at most that chunk.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

from service.batch.checkpoint import Checkpoint
from service.batch.errors import InputError, RowFailure
from service.batch.job import Job, row_id
from service.batch.readers import InputRow, open_reader
from service.batch.scoring import score_texts
from service.batch.summary import Tally, summary
from service.batch.writers import open_writer
from service.runtime import ModelRuntime


class _Default:
    """An option a job identity leaves out at its default value, as a "different job" message names it."""

    def __repr__(self) -> str:
        return "the default"


_DEFAULT = _Default()


def jsonl_columns(rows: list[InputRow]) -> list[str] | None:
    """Fields seen in the first chunk of a JSONL input (None when no row there could be read)."""
    seen: dict[str, None] = {}
    for row in rows:
        if row.values is not None:
            seen.update(dict.fromkeys(row.values))
    return list(seen) if seen else None


def score_chunk(rt: ModelRuntime, rows: list[InputRow], job: Job, tally: Tally) -> list[dict]:
    """Score one chunk and return its output records in input order; bad rows follow `--on-error`."""
    # A row has its values exactly when it has no error.
    readable = [(i, row.values) for i, row in enumerate(rows) if row.values is not None]
    scored = score_texts(
        rt,
        [values.get(job.text_field) for _, values in readable],
        job.batch_size,
        job.diagnostics,
        job.text_field,
        job.max_text_chars,
        job.max_batch_tokens,
    )
    results: list[dict] = [{"error": row.error} for row in rows]
    for (i, _), result in zip(readable, scored):
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
            tally.failed({"row": row.number, "where": row.where, "error": error})
        else:
            tally.scored(record["label"])
        records.append(record)
    return records


def progress_bar(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit=" rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.5,
        smoothing=0.05,
        dynamic_ncols=True,
    )


def _take(rows: Iterator[InputRow], n: int) -> list[InputRow]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == n:
            break
    return chunk


def run_local(job: Job, rt: ModelRuntime) -> dict:
    """The streaming loop; returns the summary. Raises InputError, RowFailure or KeyboardInterrupt (resumable)."""
    if job.output != "-" and Path(job.output).is_dir():
        raise InputError(f"{job.output} is a directory; the local engine writes one file")
    wanted = [job.text_field, job.id_field, *job.keep_fields]
    reader = open_reader(job.input, job.input_format, job.text_field, wanted, job.max_line_bytes)
    writer = None
    try:
        job.check_fields(reader.columns, job.input)
        checkpoint = None if job.output == "-" else Checkpoint(job.output)
        identity = job.identity(rt.manifest)
        previous = checkpoint.load() if checkpoint else None
        writer = open_writer(job.output, job.output_format, job.columns)
        if checkpoint is not None and previous is not None and not job.resume:
            if not job.restart:
                how = (
                    "--restart to discard it (stdin cannot be read again)"
                    if job.input == "-"
                    else ("--resume to continue it, or --restart to discard it")
                )
                raise InputError(f"{checkpoint.path} records an interrupted run into {job.output}: rerun with {how}")
            writer.discard()
            checkpoint.remove()
            previous = None
        if checkpoint is not None and previous is not None:
            # Both sides' keys: an option left out at its default on one side is still a difference.
            different = [k for k in {**previous["job"], **identity} if previous["job"].get(k) != identity.get(k)]
            if different:
                k = different[0]
                then, now = previous["job"].get(k, _DEFAULT), identity.get(k, _DEFAULT)
                raise InputError(
                    f"{checkpoint.path} belongs to a different job ({k}: {then!r} then, {now!r} now); rerun with "
                    "the same options, or --restart"
                )
        tally = Tally.from_state(previous["tally"]) if previous else Tally()
        skip = tally.rows
        if checkpoint is not None and previous is not None and previous.get("complete"):
            writer.recover_finish(previous["writer"])
            checkpoint.remove()
            return summary(job, rt.manifest, rt.directory, tally, 0, 0.0, skip)

        started = time.perf_counter()
        # The input read up to the rows already done: what a checkpoint of `tally` must record. Taken before the
        # first chunk is read (a resumed run's reader then verifies it against the interrupted run's), because
        # recording the reader's position after that read, with the old tally, made the next resume refuse an
        # unchanged input whenever a run was stopped before its first chunk was written.
        expect = previous.get("input") if previous else None
        done = expect if previous else reader.fingerprint()
        rows = reader.rows(skip, expect)
        chunk = _take(rows, job.chunk_size)
        if job.input_format == "jsonl" and not previous:
            job.check_fields(jsonl_columns(chunk), f"{job.input} (first {len(chunk)} rows)")
        state = writer.open(previous["writer"] if previous else None)
        if checkpoint:
            checkpoint.save({"job": identity, "tally": tally.state(), "writer": state, "complete": False, "input": done})
        show = not job.quiet and sys.stderr.isatty()
        with progress_bar(reader.count() if show else None, skip, show) as bar:
            while chunk:
                records = score_chunk(rt, chunk, job, tally)
                state = writer.write(records)
                if checkpoint:  # only after the chunk is on disk (write fsyncs), so a kill never loses a row
                    checkpoint.save(
                        {
                            "job": identity,
                            "tally": tally.state(),
                            "writer": state,
                            "complete": False,
                            "input": reader.fingerprint(),
                        }
                    )
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
        return summary(job, rt.manifest, rt.directory, tally, tally.rows - skip, time.perf_counter() - started, skip)
    except RowFailure:
        if writer is not None and job.output != "-":
            writer.discard()  # the job failed by policy; resuming would stop at the same row again
            Checkpoint(job.output).remove()
        raise
    finally:
        if writer is not None:
            writer.close()
        reader.close()
