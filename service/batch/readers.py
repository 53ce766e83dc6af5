"""Streaming readers for the batch job's input formats (JSONL, CSV, Parquet, plain text).

Readers yield `InputRow`s one at a time and never hold more than the caller asks for; a row that cannot be read is
an `InputRow` with an `error`, never an exception, so one bad row costs only itself. Every reader can fingerprint
the input read so far, which is what `--resume` checks before skipping rows. pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.batch.columns import require_pyarrow
from service.batch.errors import InputError

# A line (a JSONL row, a text line, a CSV line) longer than this is a bad row, read past in bounded blocks, never
# held whole: 1 MiB, or 8 bytes per allowed text character if that is more (a JSON \uXXXX escape takes 6).
MIN_MAX_LINE_BYTES = 1 << 20
# JSON nested deeper than this is a bad row. How deep Python's parser and encoder reach depends on the stack they
# are called from (the writer's is deeper than the reader's, so a row that parsed could fail to be written back):
# a small fixed limit makes a row's fate independent of that.
MAX_JSON_DEPTH = 100


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
        raise InputError(f"the checkpoint for {path} has no input fingerprint (an older version wrote it); rerun with --restart")
    if now != then:
        raise InputError(
            f"{path} changed since the interrupted run (its first {then['bytes']:,} bytes, already "
            "scored, are not the same): rerun with --restart to score it from the start"
        )


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

    columns: list[str]  # the header

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
            if fields is None or error or bad:  # fields is None only with a csv error
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
        pa = require_pyarrow()
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


def open_input(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the reader owns and closes it
    except FileNotFoundError:
        raise InputError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror})") from exc


def open_reader(path: str, fmt: str, text_field: str, wanted: Iterable[str], max_line_bytes: int = MIN_MAX_LINE_BYTES) -> Reader:
    if fmt == "jsonl":
        return JsonlReader(path, text_field, max_line_bytes)
    if fmt == "text":
        return TextReader(path, text_field, max_line_bytes)
    if fmt == "csv":
        return CsvReader(path, max_line_bytes)
    if fmt == "parquet":
        return ParquetReader(path, wanted)
    raise InputError(f"unknown input format {fmt!r}")
