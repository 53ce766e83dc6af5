"""The diagnostics report's schema (service/schemas.py: DiagnosticsReport): it is in the OpenAPI document, every
report the service gives matches it, and its nullable fields stay null in responses (not dropped)."""

from __future__ import annotations

import pytest

from service.schemas import DiagnosticsReport

GRU_UNI = "gru-uni-meanmax-1"  # unidirectional: exact running scores
DEFAULT = "tiny-lstm"  # bidirectional: running scores are null, contributions from occlusion


def test_the_report_schema_is_in_the_openapi_document(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    report = next(schema for name, schema in schemas.items() if name.startswith("DiagnosticsReport"))
    assert {"tokens", "layers", "summary"} <= set(report["required"])
    token = next(schema for name, schema in schemas.items() if name.startswith("TokenReport"))
    assert {"running_score", "contribution", "unknown"} <= set(token["properties"])
    response = next(schema for name, schema in schemas.items() if name.startswith("SentimentResponse"))
    assert "DiagnosticsReport" in str(response["properties"]["diagnostics"])


@pytest.mark.parametrize("model", [DEFAULT, GRU_UNI])
def test_every_report_matches_the_schema_and_keeps_its_nulls(client, model):
    body = {
        "text": "Not bad at all, <br /> a superb cast and a zzqx plot.",
        "model": model,
        "attribution": True,
        "include_hidden": True,
    }
    response = client.post("/v1/sentiment", json=body)
    assert response.status_code == 200, response.text
    report = response.json()["diagnostics"]
    DiagnosticsReport.model_validate(report)
    tokens, summary = report["tokens"], report["summary"]
    assert all("attribution" in t and "running_score" in t for t in tokens)
    if model == DEFAULT:
        assert all(t["running_score"] is None and t["score_delta"] is None for t in tokens)
        assert summary["running_score_method"] is None and summary["running_score_note"]
    else:
        assert summary["running_score_method"] == "exact" and all(t["running_score"] is not None for t in tokens)
        assert "running_score_note" not in summary  # optional fields that were not set stay absent
    assert "hidden" in report and report["hidden"]["layers"]
    plain = client.post("/v1/sentiment", json={"text": body["text"], "model": model}).json()
    assert "diagnostics" not in plain


def test_batch_reports_match_the_schema(client):
    response = client.post(
        "/v1/sentiment/batch", json={"items": [{"text": "great"}, {"text": "awful film"}], "diagnostics": True, "model": GRU_UNI}
    )
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        DiagnosticsReport.model_validate(result["diagnostics"])


@pytest.mark.parametrize("model", [DEFAULT, GRU_UNI])
@pytest.mark.parametrize("hidden,attribution", [(False, False), (True, True)])
def test_the_built_report_is_already_its_schemas_serialized_form(client, model, hidden, attribution):
    """The scoring core sends service/diagnostics.py's report without validating it on every request: that is only
    right while the report round-trips through DiagnosticsReport unchanged (same keys, values and nulls)."""
    rt = client.app.state.service.model(model)
    for text in ("Not bad at all, <br /> a superb cast and a zzqx plot.", "awful", "A dull start, but a wonderful end!"):
        enc = rt.encode([text])[0]
        _, report = rt.diagnose(text, enc, hidden, attribution)
        assert DiagnosticsReport.model_validate(report).model_dump(mode="json", exclude_none=True) == report
