"""Rows in and out of batch jobs: streaming readers per input format (JSONL, CSV, Parquet, plain text), crash-safe
writers per output format (JSONL, CSV, Parquet), row validation, and `score_texts`, the per-chunk scoring that the
local engine (service/cli.py) and the Ray predictor (service/ray_predictor.py) share so both give the same rows.

Readers yield `InputRow`s one at a time and never hold more than the caller asks for. Writers append one chunk at a
time to OUTPUT.partial (OUTPUT.parts/ for Parquet) and fsync it before the caller moves the `Checkpoint` forward, so
after a kill at any moment the checkpoint describes an exact prefix of the output; the final file appears only by an
atomic rename. pyarrow is imported only for Parquet (it is the `parquet` extra).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

INPUT_FORMATS = ("jsonl", "csv", "parquet", "text")
OUTPUT_FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
               ".pq": "parquet", ".txt": "text", ".text": "text"}
BASE_COLUMNS = ["id", "label", "score", "num_tokens", "truncated"]
DIAGNOSTIC_COLUMNS = ["top_positive", "top_negative", "unknown_share"]
ERROR_COLUMN = "error"
# A line (a JSONL row, a text line, a CSV line) longer than this is a bad row, read past in bounded blocks, never
# held whole: 1 MiB, or 8 bytes per allowed text character if that is more (a JSON \uXXXX escape takes 6).
MIN_MAX_LINE_BYTES = 1 << 20
# JSON nested deeper than this is a bad row. How deep Python's parser and encoder reach depends on the stack they
# are called from (the writer's is deeper than the reader's, so a row that parsed could fail to be written back):
# a small fixed limit makes a row's fate independent of that.
MAX_JSON_DEPTH = 100


class InputError(ValueError):
    """A problem with the job's input or options (exit code 2): the message says what and where."""


class RowFailure(Exception):
    """A bad row under `--on-error fail` (exit code 1); the message names the row."""


class JobError(RuntimeError):
    """The job could not finish for a reason other than its input, e.g. a Ray cluster failure (exit code 3)."""


def input_format(path: str, override: str | None = None) -> str:
    if override:
        return override
    if path == "-":
        return "jsonl"
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path} from its extension; pass --input-format "
                         f"({', '.join(INPUT_FORMATS)})")
    return fmt


def output_format(path: str, override: str | None = None) -> str:
    if override:
        return override
    fmt = _EXTENSIONS.get(Path(path).suffix.lower(), "jsonl") if path != "-" else "jsonl"
    return fmt if fmt in OUTPUT_FORMATS else "jsonl"


# -- reading -------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class InputRow:
    number: int  # 1-based row number: the id when the row has none
    values: dict | None  # the row's fields (None when it could not be read)
    error: str | None = None  # why it could not be read
    line: int | None = None  # first line of the row in a text file, for messages

    @property
    def where(self) -> str:
        if self.line is None:
            return f"row {self.number}"
        return f"line {self.line}" if self.line == self.number else f"row {self.number} (line {self.line})"


class Reader:
    """One input: `columns` (known up front for CSV, Parquet and text; None for JSONL, whose rows may differ),
    `rows(skip, expect)`, the rows after the first `skip` (which must have the `fingerprint()` `expect`), and
    `fingerprint()`, what identifies the input read so far."""

    columns: list[str] | None = None

    def rows(self, skip: int = 0, expect: dict | None = None) -> Iterator[InputRow]:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def count(self) -> int | None:
        """Number of rows (exact for JSONL, text and Parquet; CSV counts lines, so multi-line fields overcount)."""
        return None

    def close(self) -> None:
        pass


def _count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def default_max_line_bytes(max_text_chars: int) -> int:
    return max(MIN_MAX_LINE_BYTES, 8 * max_text_chars)


class BoundedLines:
    """The lines of a binary stream, each read with at most `limit` bytes in memory: a line longer than that is
    read past in 64 KiB blocks and yielded as its length (an int) instead of its bytes. Every byte consumed goes
    into a sha256, so `fingerprint()` identifies exactly the input read so far (what `--resume` checks)."""

    def __init__(self, stream: BinaryIO, limit: int):
        self.stream, self.limit = stream, limit
        self.sha = hashlib.sha256()
        self.bytes = 0

    def _consume(self, raw: bytes) -> None:
        self.sha.update(raw)
        self.bytes += len(raw)

    def __iter__(self) -> Iterator[bytes | int]:
        while True:
            raw = self.stream.readline(self.limit + 1)
            if not raw:
                return
            self._consume(raw)
            if len(raw) <= self.limit:
                yield raw
                continue
            size = len(raw)
            while not raw.endswith(b"\n"):
                raw = self.stream.readline(1 << 16)
                if not raw:
                    break
                self._consume(raw)
                size += len(raw)
            yield size

    def fingerprint(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha.hexdigest()}

    def too_long(self, size: int) -> str:
        return f"over the line limit ({self.limit:,} bytes, --max-line-bytes): {size:,} bytes"


def verify_fingerprint(path: str, now: dict, then: dict | None) -> None:
    """Refuses a resume whose input no longer starts with the bytes the interrupted run read."""
    if then is None:
        raise InputError(f"the checkpoint for {path} has no input fingerprint (an older version wrote it); rerun "
                         "with --restart")
    if now != then:
        raise InputError(f"{path} changed since the interrupted run (its first {then['bytes']:,} bytes, already "
                         "scored, are not the same): rerun with --restart to score it from the start")


def _decode(raw: bytes, first: bool) -> str:
    text = raw.decode("utf-8")
    if first and text.startswith("\ufeff"):  # a byte-order mark from Windows editors
        text = text[1:]
    return text.rstrip("\r\n")


class _LineReader(Reader):
    def __init__(self, path: str, text_field: str, max_line_bytes: int):
        self.path = path
        self.text_field = text_field
        self.stream: BinaryIO = sys.stdin.buffer if path == "-" else open_input(path)
        self.lines = BoundedLines(self.stream, max_line_bytes)

    def fingerprint(self) -> dict:
        return self.lines.fingerprint()

    def count(self) -> int | None:
        return None if self.path == "-" else _count_lines(Path(self.path))

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()

    def rows(self, skip: int = 0, expect: dict | None = None) -> Iterator[InputRow]:
        number = 0
        for raw in self.lines:
            number += 1
            if number <= skip:
                if number == skip:
                    verify_fingerprint(self.path, self.fingerprint(), expect)
                continue
            if isinstance(raw, int):
                yield InputRow(number, None, self.lines.too_long(raw), number)
                continue
            try:
                line = _decode(raw, number == 1)
            except UnicodeDecodeError as exc:
                yield InputRow(number, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", number)
                continue
            yield self.parse(number, line)
        if number < skip:  # fewer rows than the interrupted run had already done
            verify_fingerprint(self.path, self.fingerprint(), expect)

    def parse(self, number: int, line: str) -> InputRow:
        raise NotImplementedError


class JsonlReader(_LineReader):
    def parse(self, number: int, line: str) -> InputRow:
        if not line.strip():
            return InputRow(number, None, "empty line", number)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return InputRow(number, None, f"invalid JSON ({exc.msg} at column {exc.colno})", number)
        except RecursionError:
            return InputRow(number, None, f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)", number)
        except ValueError:  # Python refuses to convert integers of over 4,300 digits (a CPU-time guard)
            return InputRow(number, None, "invalid JSON (an integer of over 4,300 digits)", number)
        if line.count("[") + line.count("{") > MAX_JSON_DEPTH and _depth(obj) > MAX_JSON_DEPTH:
            return InputRow(number, None, f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)", number)
        if "\\u" in line and _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(obj):
            return InputRow(number, None, "not valid Unicode (a lone surrogate \\uD800-\\uDFFF escape)", number)
        if not isinstance(obj, dict):
            return InputRow(number, None, f"a JSON {type(obj).__name__}, not an object", number)
        return InputRow(number, obj, None, number)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(obj) -> bool:
    # A paired escape (an emoji) decodes to one character; a lone one stays a surrogate, which no UTF-8 writer and
    # no tokenizer accepts. Only lines with such an escape get here, so the extra encoding is rare.
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _depth(obj) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:  # iterative: the point is to survive depths that recursion does not
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


class TextReader(_LineReader):
    """One review per line; the line (without its line break) is the text and the line number the id."""

    def __init__(self, path: str, text_field: str, max_line_bytes: int):
        super().__init__(path, text_field, max_line_bytes)
        self.columns = [text_field]

    def parse(self, number: int, line: str) -> InputRow:
        return InputRow(number, {self.text_field: line}, None, number)


class CsvReader(Reader):
    """A header row, then one row per record (quoted fields may span lines). Values stay strings: CSV has no types.
    Blank lines are not rows (as in pyarrow's CSV reader, which the Ray engine uses).

    Parsed strictly, so that a stray quote is a bad row rather than a silent merge: a quote never closed (the field
    would run to the end of the file) or closed mid-field is reported, naming the lines it swallowed; a field is
    capped at the line limit; the text limit and the field count catch the rest."""

    def __init__(self, path: str, max_line_bytes: int):
        self.path = path
        self.stream = sys.stdin.buffer if path == "-" else open_input(path)
        self.bad_lines: dict[int, str] = {}
        self.lines = BoundedLines(self.stream, max_line_bytes)
        csv.field_size_limit(max_line_bytes)  # process-wide, but a job reads one CSV
        self.reader = csv.reader(self._lines(), strict=True)
        try:
            header = next(self.reader)
        except StopIteration:
            raise InputError(f"{path}: empty CSV file (no header row)") from None
        except csv.Error as exc:
            raise InputError(f"{path}: unreadable CSV header ({exc})") from exc
        if 1 in self.bad_lines:
            raise InputError(f"{path}: unreadable CSV header ({self.bad_lines[1]})")
        if len(set(header)) != len(header):
            raise InputError(f"{path}: repeated column names in the CSV header {header}")
        self.columns = header

    def _lines(self) -> Iterator[str]:
        # Decode line by line so that one line of bad UTF-8 (or one over the limit) spoils only its own row.
        for number, raw in enumerate(self.lines, 1):
            if isinstance(raw, int):
                self.bad_lines[number] = f"line {number} is {self.lines.too_long(raw)}"
                yield "\ufffd\n"  # a stand-in the row's error replaces; never the line itself
                continue
            try:
                yield raw.decode("utf-8").removeprefix("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_lines[number] = "not valid UTF-8"
                yield raw.decode("utf-8", errors="replace")

    def fingerprint(self) -> dict:
        return self.lines.fingerprint()

    def count(self) -> int | None:
        return None if self.path == "-" else max(0, _count_lines(Path(self.path)) - 1)

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()

    def rows(self, skip: int = 0, expect: dict | None = None) -> Iterator[InputRow]:
        width, number = len(self.columns), 0
        while True:
            start = self.reader.line_num + 1
            try:
                fields = next(self.reader)
                error = None
            except StopIteration:
                if number < skip:  # fewer rows than the interrupted run had already done
                    verify_fingerprint(self.path, self.fingerprint(), expect)
                return
            except csv.Error as exc:
                fields, error = None, self._csv_error(exc, start)
            if fields == []:
                continue
            number += 1
            if number <= skip:
                if number == skip:
                    verify_fingerprint(self.path, self.fingerprint(), expect)
                continue
            bad = [self.bad_lines.pop(n) for n in range(start, self.reader.line_num + 1) if n in self.bad_lines]
            if error or bad:
                yield InputRow(number, None, error or bad[0], start)
            elif len(fields) != width:
                yield InputRow(number, None, f"{len(fields)} fields, the header has {width}", start)
            else:
                yield InputRow(number, dict(zip(self.columns, fields)), None, start)

    def _csv_error(self, exc: csv.Error, start: int) -> str:
        end = self.reader.line_num
        lines = f"line {start}" if end == start else f"lines {start}-{end}"
        if "unexpected end of data" in str(exc):
            return f"unclosed quote: a quoted field opened in this row runs to the end of the file ({lines})"
        if "field limit" in str(exc):
            return f"a field over the line limit ({self.lines.limit:,} characters, --max-line-bytes; {lines})"
        return f"malformed CSV ({exc}; {lines}): a stray quote?"


class ParquetReader(Reader):
    """Row groups are read a batch at a time; a resumed job skips whole row groups without reading them. Its
    fingerprint is the whole file's sha256 (rows are not laid out as a prefix of the bytes), read once."""

    def __init__(self, path: str, wanted: Iterable[str]):
        pa = _pyarrow()
        import pyarrow.parquet as pq

        if path == "-":
            raise InputError("Parquet cannot be read from stdin; pass a file")
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        self.path = path
        self.schema = self.file.schema_arrow
        self.columns = list(self.schema.names)
        self.wanted = [c for c in dict.fromkeys(wanted) if c in self.columns]
        self._fingerprint: dict | None = None

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            sha, size = hashlib.sha256(), 0
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(block)
                    size += len(block)
            self._fingerprint = {"bytes": size, "sha256": sha.hexdigest()}
        return self._fingerprint

    def count(self) -> int:
        return self.file.metadata.num_rows

    def close(self) -> None:
        self.file.close()

    def rows(self, skip: int = 0, expect: dict | None = None) -> Iterator[InputRow]:
        if skip:
            verify_fingerprint(self.path, self.fingerprint(), expect)
        meta, group, number = self.file.metadata, 0, 0
        while group < meta.num_row_groups and number + meta.row_group(group).num_rows <= skip:
            number += meta.row_group(group).num_rows
            group += 1
        groups = list(range(group, meta.num_row_groups))
        if not groups:
            return
        for batch in self.file.iter_batches(batch_size=8192, row_groups=groups, columns=self.wanted):
            columns = {name: batch.column(name).to_pylist() for name in self.wanted}
            for i in range(batch.num_rows):
                number += 1
                if number > skip:
                    yield InputRow(number, {name: values[i] for name, values in columns.items()})


def _pyarrow():
    try:
        import pyarrow
    except ImportError:  # the base install has no pyarrow: it is the `parquet` extra
        raise InputError("Parquet needs pyarrow: pip install 'imdb-sentiment[parquet]'") from None
    return pyarrow


def open_input(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the reader owns and closes it
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})") from exc


def open_reader(path: str, fmt: str, text_field: str, wanted: Iterable[str],
                max_line_bytes: int = MIN_MAX_LINE_BYTES) -> Reader:
    if fmt == "jsonl":
        return JsonlReader(path, text_field, max_line_bytes)
    if fmt == "text":
        return TextReader(path, text_field, max_line_bytes)
    if fmt == "csv":
        return CsvReader(path, max_line_bytes)
    if fmt == "parquet":
        return ParquetReader(path, wanted)
    raise InputError(f"unknown input format {fmt!r}")


# -- scoring -------------------------------------------------------------------------------------------------------
def gate_columns(manifest: dict) -> list[str]:
    """The summary gates this model has: the LSTM forget gate or the GRU update gate (a plain RNN has neither)."""
    gates = manifest["model"].get("gates", [])
    return [f"mean_{g}_gate" for g in ("forget", "update") if g in gates]


def text_problem(value, field: str, max_chars: int | None = None) -> str | None:
    if value is None:
        return f"missing text (no {field!r} field or null)"
    if not isinstance(value, str):
        return f"{field!r} is not a string (got {type(value).__name__})"
    if max_chars is not None and len(value) > max_chars:
        return f"text too long ({len(value):,} characters; the limit is {max_chars:,}, --max-text-chars)"
    if not value.strip():
        return "empty text"
    return None


def _encode_each(rt, texts: list[str]) -> list:
    """`rt.encode` text by text, after it failed on a whole chunk: the texts it fails on become None."""
    out = []
    for text in texts:
        try:
            out.append(rt.encode([text])[0])
        except Exception:  # noqa: BLE001 - whatever one text does to the tokenizer costs that row only
            out.append(None)
    return out


def score_texts(rt, values: list, batch_size: int = 64, diagnostics: bool = False, field: str = "text",
                max_chars: int | None = None) -> list[dict]:
    """One dict per value: label, score (P(positive)), num_tokens, truncated (+ the compact diagnostics), or only
    `error` for a value that cannot be scored (`max_chars`: longer texts are not scored). Scoring goes through
    `ModelRuntime.predict` (length-sorted batches)."""
    results: list[dict | None] = [None] * len(values)
    ok = []
    for i, value in enumerate(values):
        problem = text_problem(value, field, max_chars)
        if problem:
            results[i] = {"error": problem}
        else:
            ok.append(i)
    texts = [values[i] for i in ok]
    try:
        encodings = rt.encode(texts)
    except Exception:  # noqa: BLE001 - find the text(s) to blame rather than end the job
        encodings = _encode_each(rt, texts)
    scorable = []
    for i, enc in zip(ok, encodings):
        if enc is None:
            results[i] = {"error": "could not be tokenized"}
        elif enc.num_tokens == 0:
            results[i] = {"error": "no tokens left after cleaning"}
        else:
            scorable.append((i, enc))
    if scorable:
        probs = rt.predict([enc for _, enc in scorable], batch_size)
        gates = gate_columns(rt.manifest) if diagnostics else []
        for (i, enc), row in zip(scorable, probs):
            full = rt.result(enc, row)
            out = {"label": full["label"], "score": full["score"], "num_tokens": full["num_tokens"],
                   "truncated": full["truncated"]}
            if diagnostics:
                summary = rt.diagnose(values[i], enc)[1]["summary"]
                out["top_positive"] = [t["text"] for t in summary["top_positive"]]
                out["top_negative"] = [t["text"] for t in summary["top_negative"]]
                out["unknown_share"] = summary["unknown_share"]
                for gate in gates:
                    out[gate] = summary.get(gate)
            results[i] = out
    return results


def output_columns(manifest: dict, diagnostics: bool, keep_fields: list[str]) -> list[str]:
    diag = DIAGNOSTIC_COLUMNS + gate_columns(manifest) if diagnostics else []
    return BASE_COLUMNS + diag + keep_fields + [ERROR_COLUMN]


# -- writing -------------------------------------------------------------------------------------------------------
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
        if self.stdout:
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

    def _sync(self) -> dict:
        self.fh.flush()
        if self.stdout:
            return {}
        os.fsync(self.fh.fileno())
        return {"bytes": self.fh.tell()}

    def write(self, records: list[dict]) -> dict:
        self.fh.write(self.encode(records))
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
        pa = _pyarrow()
        self.pa = pa
        self.parts = Path(path + ".parts")
        self.done = 0
        list_of_str = pa.list_(pa.string())
        self.types = {"label": pa.string(), "score": pa.float64(), "num_tokens": pa.int64(), "truncated": pa.bool_(),
                      "error": pa.string(), "top_positive": list_of_str, "top_negative": list_of_str,
                      "unknown_share": pa.float64(), "mean_forget_gate": pa.float64(),
                      "mean_update_gate": pa.float64()}

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
            return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, default=_json_default)
                             for v in values], type=pa.string())

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
                columns.append(pa.array([None if v is None else json.dumps(v, default=_json_default)
                                         for v in column.to_pylist()], type=field.type))
        return pa.Table.from_arrays(columns, schema=schema)

    def finish(self) -> None:
        import pyarrow.parquet as pq

        parts = [self._part(i) for i in range(self.done)]
        schema = self._target_schema([pq.read_schema(p) for p in parts]) if parts else self.pa.schema(
            [self.pa.field(c, self.types.get(c, self.pa.null())) for c in self.columns])
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


class Checkpoint:
    """OUTPUT.checkpoint.json: the job's identity, rows done, the writer's state and the running counts. Replaced
    atomically after every durable chunk, so it never runs ahead of the output."""

    def __init__(self, output: str):
        self.path = Path(output + ".checkpoint.json")

    def load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path} is not a readable checkpoint ({exc}); rerun with --restart") from exc

    def save(self, state: dict) -> None:
        atomic_write_text(self.path, json.dumps(state, indent=1))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
