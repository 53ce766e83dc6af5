"""Settings: the SENTIMENT_ environment prefix, comma-separated lists, defaults, and bad values failing fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_defaults_point_at_the_repo_exports(clean_env):
    s = Settings()
    assert s.model_root == Path(__file__).resolve().parents[2] / "exported"
    assert s.default_model is None and s.providers == [] and s.api_keys == [] and s.cors_origins == []
    assert s.max_batch_items > 1 and s.max_wait_ms >= 0 and s.queue_size >= s.max_batch_items


def test_environment_overrides_with_comma_separated_lists(clean_env, tmp_path):
    clean_env.setenv("SENTIMENT_MODEL_ROOT", str(tmp_path))
    clean_env.setenv("SENTIMENT_DEFAULT_MODEL", "imdb-gru")
    clean_env.setenv("SENTIMENT_PROVIDERS", "cuda, cpu")
    clean_env.setenv("SENTIMENT_API_KEYS", "key-one-123,key-two-456")
    clean_env.setenv("SENTIMENT_CORS_ORIGINS", "https://a.example,https://b.example")
    clean_env.setenv("SENTIMENT_MAX_WAIT_MS", "7.5")
    clean_env.setenv("SENTIMENT_QUEUE_SIZE", "10")
    clean_env.setenv("SENTIMENT_INTRA_OP_THREADS", "4")
    s = Settings()
    assert s.model_root == tmp_path and s.default_model == "imdb-gru"
    assert s.providers == ["cuda", "cpu"]
    assert s.api_keys == ["key-one-123", "key-two-456"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert (s.max_wait_ms, s.queue_size, s.intra_op_threads) == (7.5, 10, 4)


def test_arguments_beat_the_environment(clean_env, tmp_path):
    clean_env.setenv("SENTIMENT_MODEL_ROOT", "/somewhere/else")
    assert Settings(model_root=tmp_path).model_root == tmp_path


@pytest.mark.parametrize(
    "key, value",
    [
        ("SENTIMENT_MAX_WAIT_MS", "-1"),
        ("SENTIMENT_QUEUE_SIZE", "0"),
        ("SENTIMENT_MAX_TEXT_CHARS", "lots"),
        ("SENTIMENT_MAX_BATCH_ITEMS", "0"),
        ("SENTIMENT_INTRA_OP_THREADS", "-2"),
        ("SENTIMENT_API_KEYS", "short"),
        ("SENTIMENT_MAX_HEADER_BYTES", "100"),
        ("SENTIMENT_MAX_HEADERS", "0"),
        ("SENTIMENT_HEADER_TIMEOUT_S", "0"),
        ("SENTIMENT_BODY_TIMEOUT_S", "-1"),
        ("SENTIMENT_KEEP_ALIVE_S", "0"),
        ("SENTIMENT_MAX_BUFFERED_BODY_BYTES", "1000"),  # below max_body_bytes: a body at the limit could never fit
    ],
)
def test_bad_values_fail_fast(clean_env, key, value):
    clean_env.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_cors_origins_enable_cors(make_client):
    with make_client(cors_origins=["https://page.example"]) as c:
        response = c.post("/v1/sentiment", json={"text": "great"}, headers={"origin": "https://page.example"})
        assert response.headers["access-control-allow-origin"] == "https://page.example"
        other = c.post("/v1/sentiment", json={"text": "great"}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
