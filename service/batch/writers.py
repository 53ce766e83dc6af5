"""Crash-safe writers for the batch job's output formats (JSONL, CSV, Parquet) and strict JSON for every cell.

Writers append one chunk at a time to OUTPUT.partial (OUTPUT.parts/ for Parquet) and fsync it before the caller
moves the checkpoint forward (service/batch/checkpoint.py), so after a kill at any moment the checkpoint describes
an exact prefix of the output; the final file appears only by an atomic rename.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from service.batch.columns import arrow_types, require_pyarrow
from service.batch.errors import InputError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _json_default(value):
    # Parquet columns can hold dates, decimals and bytes: write their text rather than fail the job.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _finite(value):
    """`value` with NaN and ±Infinity replaced by None, recursively: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value) -> str:
    """Strict JSON (NaN and ±Infinity, which JSONL inputs and Parquet floats can hold, become null)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default)
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the value
        return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=_json_default)


def jsonl_line(record: dict) -> str:
    return json_text(record) + "\n"


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json_text(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""  # written as null, as in JSONL
    return str(value)


class Writer:
    """Appends chunks of records. `write` returns the writer's state after the chunk is durable on disk; `open`
    takes such a state back to continue after it (dropping whatever a killed run wrote past it)."""

    def __init__(self, path: str, columns: list[str]):
        self.path = path
        self.columns = columns

    def open(self, state: dict | None) -> dict:
        raise NotImplementedError

    def write(self, records: list[dict]) -> dict:
        raise NotImplementedError

    def finish(self) -> None:
        """Make OUTPUT appear, complete, in one atomic step."""

    def recover_finish(self, state: dict) -> None:
        """Complete a `finish` that a kill interrupted (the checkpoint was marked complete just before it)."""

    def discard(self) -> None:
        """Remove the partial output."""

    def close(self) -> None:
        pass


class _StreamWriter(Writer):
    """JSONL and CSV: one growing file, OUTPUT.partial, renamed to OUTPUT at the end (or stdout as it comes)."""

    def __init__(self, path: str, columns: list[str]):
        super().__init__(path, columns)
        self.stdout = path == "-"
        self.partial = None if self.stdout else Path(path + ".partial")
        self.fh: BinaryIO | None = None

    def header(self) -> bytes:
        return b""

    def encode(self, records: list[dict]) -> bytes:
        raise NotImplementedError

    def open(self, state: dict | None) -> dict:
        if self.partial is None:  # stdout
            self.fh = sys.stdout.buffer
            self.fh.write(self.header())
            return {}
        if state is None:
            self.fh = self.partial.open("wb")
            self.fh.write(self.header())
            return self._sync()
        size = self.partial.stat().st_size if self.partial.is_file() else -1
        if size < state["bytes"]:
            raise InputError(f"{self.partial} is missing or shorter than its checkpoint says; rerun with --restart")
        self.fh = self.partial.open("r+b")
        self.fh.truncate(state["bytes"])  # bytes written after the last checkpoint belong to an unfinished chunk
        self.fh.seek(state["bytes"])
        return {"bytes": state["bytes"]}

    def _opened(self) -> BinaryIO:
        if self.fh is None:
            raise RuntimeError("the output is not open (open() comes first)")
        return self.fh

    def _sync(self) -> dict:
        fh = self._opened()
        fh.flush()
        if self.stdout:
            return {}
        os.fsync(fh.fileno())
        return {"bytes": fh.tell()}

    def write(self, records: list[dict]) -> dict:
        self._opened().write(self.encode(records))
        return self._sync()

    def finish(self) -> None:
        self.close()
        if self.partial is not None:
            os.replace(self.partial, self.path)
            _fsync_dir(self.partial.parent)

    def recover_finish(self, state: dict) -> None:
        if self.partial is not None and self.partial.is_file():  # else the rename happened: OUTPUT is complete
            self.finish()

    def discard(self) -> None:
        self.close()
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fh is not None and not self.stdout:
            self.fh.close()
        self.fh = None


class JsonlWriter(_StreamWriter):
    def encode(self, records: list[dict]) -> bytes:
        return "".join(jsonl_line(r) for r in records).encode("utf-8")


class CsvWriter(_StreamWriter):
    def _rows(self, rows: Iterable[list[str]]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode("utf-8")

    def header(self) -> bytes:
        return self._rows([self.columns])

    def encode(self, records: list[dict]) -> bytes:
        return self._rows([_csv_cell(r.get(c)) for c in self.columns] for r in records)


class ParquetWriter(Writer):
    """One Parquet part per chunk in OUTPUT.parts/ (each complete on its own, so a kill loses at most the chunk in
    flight); `finish` streams the parts into one file, one row group per part, and renames it to OUTPUT."""

    _PART = re.compile(r"part-(\d{6})\.parquet$")

    def __init__(self, path: str, columns: list[str]):
        if path == "-":
            raise InputError("Parquet cannot be written to stdout; pass --output FILE.parquet")
        super().__init__(path, columns)
        self.pa = require_pyarrow()
        self.parts = Path(path + ".parts")
        self.done = 0
        self.types = arrow_types()

    def _part(self, index: int) -> Path:
        return self.parts / f"part-{index:06d}.parquet"

    def open(self, state: dict | None) -> dict:
        if state is None:
            shutil.rmtree(self.parts, ignore_errors=True)
            self.parts.mkdir()
            self.done = 0
            return {"parts": 0}
        self.done = state["parts"]
        missing = [i for i in range(self.done) if not self._part(i).is_file()]
        if not self.parts.is_dir() or missing:
            raise InputError(f"{self.parts} lacks parts its checkpoint lists; rerun with --restart")
        for extra in self.parts.iterdir():  # parts or temp files of the chunk a killed run was writing
            match = self._PART.match(extra.name)
            if not match or int(match.group(1)) >= self.done:
                extra.unlink()
        return {"parts": self.done}

    def _array(self, name: str, values: list):
        pa = self.pa
        if name in self.types:
            return pa.array(values, type=self.types[name])
        try:  # ids and kept fields: let Arrow infer the type...
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # ...unless the rows disagree: then keep their text
            return pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v, default=_json_default) for v in values], type=pa.string()
            )

    def write(self, records: list[dict]) -> dict:
        import pyarrow.parquet as pq

        table = self.pa.table({c: self._array(c, [r.get(c) for r in records]) for c in self.columns})
        final = self._part(self.done)
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.parts)
        self.done += 1
        return {"parts": self.done}

    def _target_schema(self, schemas: list):
        pa = self.pa
        fields = []
        for name in self.columns:
            types = list(dict.fromkeys(s.field(name).type for s in schemas if s.field(name).type != pa.null()))
            if len(types) <= 1:
                fields.append(pa.field(name, types[0] if types else pa.null()))
                continue
            try:  # ints and floats widen; anything else that disagrees between chunks becomes text
                merged = pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive")
                fields.append(merged.field(name))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                fields.append(pa.field(name, pa.string()))
        return pa.schema(fields)

    def _conform(self, table, schema):
        pa = self.pa
        columns = []
        for field in schema:
            column = table.column(field.name)
            try:
                columns.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                columns.append(
                    pa.array(
                        [None if v is None else json.dumps(v, default=_json_default) for v in column.to_pylist()], type=field.type
                    )
                )
        return pa.Table.from_arrays(columns, schema=schema)

    def finish(self) -> None:
        import pyarrow.parquet as pq

        parts = [self._part(i) for i in range(self.done)]
        schema = (
            self._target_schema([pq.read_schema(p) for p in parts])
            if parts
            else self.pa.schema([self.pa.field(c, self.types.get(c, self.pa.null())) for c in self.columns])
        )
        tmp = Path(self.path + ".partial")
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(self._conform(pq.read_table(part), schema))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(tmp.parent)
        shutil.rmtree(self.parts, ignore_errors=True)

    def recover_finish(self, state: dict) -> None:
        self.done = state["parts"]
        if all(self._part(i).is_file() for i in range(self.done)) and self.parts.is_dir():
            self.finish()  # the merge was cut short: parts are removed only after OUTPUT is in place
        else:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        Path(self.path + ".partial").unlink(missing_ok=True)


def open_writer(path: str, fmt: str, columns: list[str]) -> Writer:
    writer = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}.get(fmt)
    if writer is None:
        raise InputError(f"unknown output format {fmt!r}")
    return writer(path, columns)
