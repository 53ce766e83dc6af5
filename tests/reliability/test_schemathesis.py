"""Property tests of the HTTP API from its own OpenAPI schema (schemathesis): for every operation, valid and invalid
generated requests against a real uvicorn server on loopback must never get a 5xx, and every response must match
the status codes, content types, headers and bodies the schema declares (schemathesis's checks, all of them but
one: `positive_data_acceptance` expects every schema-valid request to succeed, and some cannot - a text that is
only markup has nothing to score, a text over the server's configured limit gets 413 - so a narrower check
replaces it: a schema-valid request may be refused only for one of those reasons, never as malformed).

Bounded and deterministic for CI: MAX_EXAMPLES per operation, a fixed seed (derandomize), no example database.
    .venv/bin/python -m pytest tests/reliability/test_schemathesis.py -q
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from service.app import create_app
from service.settings import Settings

MAX_EXAMPLES = 30
# Why a schema-valid request may still be refused: what the schema cannot say (see the module docstring).
VALID_BUT_REFUSED = {
    422: {"empty_text", "no_tokens", "invalid_text", "reload_refused"},  # a directory not in the root
    413: {"text_too_large", "batch_too_large", "body_too_large"},
    404: {"unknown_model"},
}
# The protocol routes answer in their protocol's shape, without our codes. TEI: its error_type; a text TEI cannot
# score (blank, only markup, over a limit) is a "Validation" refusal. OIP v2 (a bare message): an unknown model name
# (404), and an inference request without its tensors (400: the body is in the protocol's own encoding, read raw,
# so the schema declares none and a generated request has none).
PROTOCOL_REFUSED = {("/predict", 413): "Validation", ("/predict", 422): "Validation"}
V2_REFUSED = {404: "no model named", 400: "request body is not valid JSON"}


def check_refusal(case, response) -> None:
    """A schema-valid request refused: only for a reason the schema cannot express."""
    error = response.json()["error"]
    if isinstance(error, dict):
        assert error["code"] in VALID_BUT_REFUSED.get(response.status_code, ()), response.text
    elif case.path == "/predict":
        assert response.json()["error_type"] == PROTOCOL_REFUSED.get((case.path, response.status_code)), response.text
    else:
        assert case.path.startswith("/v2/"), response.text
        assert V2_REFUSED.get(response.status_code, "(none)") in error, response.text


KEY = "schemathesis-key-0123456789"  # keys on, so the admin routes are on too (off without keys: 403)

# The schema is the app's own, built without loading a model (the routes do not depend on settings). Loaded at
# import: schemathesis's fixture-based loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def server(live_server):
    # Small limits so generated texts and batches also reach the 413 paths.
    with live_server(max_text_chars=200, max_batch_items=4, max_body_bytes=20_000, api_keys=[KEY]) as srv:
        yield srv


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_response_matches_the_schema(case, server):
    response = case.call(base_url=server.url, timeout=30, headers={"X-API-Key": KEY})
    # Size limits come before validation (a 250,000-item batch gets its 413 without validating every item), so a
    # schema-invalid body over a limit is refused as too large, not as malformed: not a rejection failure.
    too_large = [negative_data_rejection] if response.status_code == 413 else []
    case.validate_response(response, excluded_checks=[positive_data_acceptance, *too_large])
    assert response.status_code < 500, response.text
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE and response.status_code >= 400:
        check_refusal(case, response)
