"""The batch job: `Job`, every option of one `sentiment-score` run, checked once, plus what a resumed run must
share with the interrupted one (`identity`) and the checks that depend on the input (its fields) or the model (the
output columns)."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from service.batch.columns import output_columns, score_columns
from service.batch.errors import InputError
from service.batch.readers import MIN_MAX_LINE_BYTES, InputRow
from service.runtime import CALL_TOKENS
from service.settings import Settings

INPUT_FORMATS = ("jsonl", "csv", "parquet", "text")
OUTPUT_FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
# A chunk is the unit of reading, checkpointing and resuming: big enough that length-sorting inside it leaves
# little padding and per-chunk fsyncs cost nothing, small enough that a kill loses seconds of work.
DEFAULT_CHUNK_SIZE = 4096
# The HTTP service's limit (413 over it): the same texts are scored, or refused, by both.
DEFAULT_MAX_TEXT_CHARS = Settings.model_fields["max_text_chars"].default


def input_format(path: str, override: str | None = None) -> str:
    if override:
        return override
    if path == "-":
        return "jsonl"
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path} from its extension; pass --input-format ({', '.join(INPUT_FORMATS)})")
    return fmt


def output_format(path: str, override: str | None = None) -> str:
    if override:
        return override
    fmt = _EXTENSIONS.get(Path(path).suffix.lower(), "jsonl") if path != "-" else "jsonl"
    return fmt if fmt in OUTPUT_FORMATS else "jsonl"


@dataclass
class Job:
    input: str
    output: str
    input_format: str
    output_format: str
    model: Path  # the artifact directory, resolved (see service/batch/cli.py: resolve_model)
    text_field: str = "text"
    id_field: str = "id"
    id_explicit: bool = False  # --id-field was given: the input must have it
    keep_fields: list[str] = field(default_factory=list)
    diagnostics: bool = False
    on_error: str = "skip"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    batch_size: int = 64
    max_batch_tokens: int = CALL_TOKENS
    resume: bool = False
    restart: bool = False
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_line_bytes: int = MIN_MAX_LINE_BYTES
    quiet: bool = False
    summary_json: str | None = None
    providers: str | None = None
    threads: int | None = None  # None: all cores locally, 1 per Ray actor
    ray_address: str | None = None
    ray_concurrency: int | None = None
    ray_model_path: bool = False  # Ray workers load `model` from their own filesystem
    columns: list[str] = field(default_factory=list)  # output columns, set once the model is known
    score_columns: list[str] = field(default_factory=list)  # the ones scoring fills: label .. diagnostics

    def identity(self, manifest: dict) -> dict:
        """What a resumed run must share with the interrupted one for the output to be the same. (The input's
        content is checked apart: the checkpoint's `input` fingerprint, see `readers.BoundedLines`.)"""
        src: dict[str, str | int] = {"input": self.input}
        if self.input != "-":
            src = {"input": str(Path(self.input).resolve()), "input_size": Path(self.input).stat().st_size}
        keys = (
            "input_format",
            "output_format",
            "text_field",
            "id_field",
            "keep_fields",
            "diagnostics",
            "chunk_size",
            "batch_size",
            "max_text_chars",
            "max_line_bytes",
        )
        model = {
            "name": manifest["name"],
            "version": manifest["version"],
            "sha256": manifest["files"]["model.onnx"].get("sha256"),
        }
        # An int8 model's scores depend on which texts share a call, so a changed call budget is a different job; at
        # its default it is left out, so runs checkpointed before the option existed still resume.
        calls = {"max_batch_tokens": self.max_batch_tokens} if self.max_batch_tokens != CALL_TOKENS else {}
        return {**src, **{k: getattr(self, k) for k in keys}, **calls, "model": model}

    def set_columns(self, manifest: dict) -> None:
        clash = [f for f in self.keep_fields if f in output_columns(manifest, self.diagnostics, [])]
        if clash:
            raise InputError(f"--keep-fields {clash[0]!r} clashes with the output column of the same name")
        self.columns = output_columns(manifest, self.diagnostics, self.keep_fields)
        self.score_columns = score_columns(manifest, self.diagnostics)

    def check_fields(self, columns: list[str] | None, source: str) -> None:
        if columns is None:
            return
        wanted = [self.text_field] + ([self.id_field] if self.id_explicit else []) + self.keep_fields
        missing = [f for f in wanted if f not in columns]
        if missing:
            raise InputError(f"{source}: no field {missing[0]!r} (fields: {', '.join(columns) or 'none'})")

    def refuse_writing_over_input(self) -> None:
        """Every file the job writes or replaces (OUTPUT, OUTPUT.partial, the checkpoint, the summary and their
        temporary files), compared with the input by inode, so that hard links, symlinks and other spellings count."""
        source = _input_identity(self.input)
        if source is None:
            return
        paths = []
        if self.output != "-" and "://" not in self.output:
            paths += [
                ("the output", self.output),
                ("the output's partial file", self.output + ".partial"),
                ("the output's parts", self.output + ".parts"),
                ("the checkpoint", self.output + ".checkpoint.json"),
                ("the checkpoint's temporary file", self.output + ".checkpoint.json.tmp"),
            ]
        if self.summary_json:
            paths += [("the summary", self.summary_json), ("the summary's temporary file", self.summary_json + ".tmp")]
        for role, path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue  # not there (yet), so not the input
            if (st.st_dev, st.st_ino) == source:
                raise InputError(
                    f"{role}, {path}, is the input file ({self.input}): refusing to overwrite the input; "
                    "pick another --output or --summary-json"
                )


def _input_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the input: the file, or the file stdin was redirected from; None for a pipe."""
    try:
        st = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
    except (OSError, ValueError):  # missing (reported when it is opened), or no real stdin (as under pytest)
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def row_id(row: InputRow, id_field: str):
    value = row.values.get(id_field) if row.values is not None else None
    return row.number if value is None or value == "" else value
