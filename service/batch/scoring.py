"""Scoring one chunk of raw values into result dicts: the one path both engines (local and Ray) take, so they give
the same rows. A value that cannot be scored (missing, not text, too long, nothing left after tokenizing) gets an
`error` instead of failing the chunk."""

from __future__ import annotations

from service.batch.columns import gate_columns
from service.runtime import CALL_TOKENS
from service.trust import TrustPolicy

# The service's default thresholds (SENTIMENT_WARN_* settings; abstaining is off, as by default in the service).
TRUST = TrustPolicy()


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


def _row(rt, enc, probs) -> dict:
    full = rt.result(enc, probs)
    row = {"label": full["label"], "score": full["score"], "num_tokens": full["num_tokens"], "truncated": full["truncated"]}
    return TRUST.apply(row, enc, rt.tokenizer.unk_id)  # + unknown_share and warnings, as the HTTP service answers


def score_texts(
    rt,
    values: list,
    batch_size: int = 64,
    diagnostics: bool = False,
    field: str = "text",
    max_chars: int | None = None,
    max_tokens: int = CALL_TOKENS,
) -> list[dict]:
    """One dict per value: label, score (P(positive)), num_tokens, truncated, unknown_share, warnings (+ the compact
    diagnostics), or only `error` for a value that cannot be scored (`max_chars`: longer texts are not scored).

    Plain scoring goes through `ModelRuntime.predict` (length-sorted calls of at most `batch_size` texts and
    `max_tokens` padded tokens). With `diagnostics` each text runs the diagnostics graph once, which also gives its
    probabilities (as the HTTP service's diagnostics do), so the scoring graph is not run for it as well."""
    results: list[dict] = [{} for _ in values]  # every slot is filled below: an error or a result
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
    if not scorable:
        return results
    if not diagnostics:
        probs = rt.predict([enc for _, enc in scorable], batch_size, max_tokens)
        for (i, enc), row in zip(scorable, probs):
            results[i] = _row(rt, enc, row)
        return results
    gates = gate_columns(rt.manifest)
    for i, enc in scorable:
        probs, report = rt.diagnose(values[i], enc)
        summary = report["summary"]
        out = _row(rt, enc, probs)
        out["top_positive"] = [t["text"] for t in summary["top_positive"]]
        out["top_negative"] = [t["text"] for t in summary["top_negative"]]
        for gate in gates:
            out[gate] = summary.get(gate)
        results[i] = out
    return results
