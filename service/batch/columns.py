"""The batch output's columns and their Arrow types, shared by the local writers and the Ray engine.

pyarrow is imported only when asked for (it is the `parquet` extra): `require_pyarrow` turns its absence into a
clear input error.
"""

from __future__ import annotations

from service.batch.errors import InputError

BASE_COLUMNS = ["id", "label", "score", "num_tokens", "truncated", "unknown_share", "warnings"]
DIAGNOSTIC_COLUMNS = ["top_positive", "top_negative"]
ERROR_COLUMN = "error"


def gate_columns(manifest: dict) -> list[str]:
    """The summary gates this model has: the LSTM forget gate or the GRU update gate (a plain RNN has neither)."""
    gates = manifest["model"].get("gates", [])
    return [f"mean_{g}_gate" for g in ("forget", "update") if g in gates]


def output_columns(manifest: dict, diagnostics: bool, keep_fields: list[str]) -> list[str]:
    """id, the score columns (+ the compact diagnostics), the kept input fields, error: the order rows are written in."""
    diag = DIAGNOSTIC_COLUMNS + gate_columns(manifest) if diagnostics else []
    return BASE_COLUMNS + diag + keep_fields + [ERROR_COLUMN]


def score_columns(manifest: dict, diagnostics: bool) -> list[str]:
    """The columns scoring fills (label .. diagnostics), without id, kept fields and error."""
    return output_columns(manifest, diagnostics, [])[1:-1]


def require_pyarrow():
    try:
        import pyarrow
    except ImportError:  # the base install has no pyarrow: it is the `parquet` extra
        raise InputError("Parquet needs pyarrow: pip install 'imdb-sentiment[parquet]'") from None
    return pyarrow


def arrow_types() -> dict:
    """The Arrow type of every column scoring writes (ids and kept fields keep whatever type their values have)."""
    pa = require_pyarrow()
    strings = pa.list_(pa.string())
    return {
        "label": pa.string(),
        "score": pa.float64(),
        "num_tokens": pa.int64(),
        "truncated": pa.bool_(),
        "error": pa.string(),
        "top_positive": strings,
        "top_negative": strings,
        "unknown_share": pa.float64(),
        "warnings": strings,
        "mean_forget_gate": pa.float64(),
        "mean_update_gate": pa.float64(),
    }
