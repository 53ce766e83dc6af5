"""Execution-provider selection (CUDA when offered, else CPU; explicit lists honoured in order; impossible requests
fail loudly) and that the provider in use is reported by /v1/models and labelled in the metrics."""

from __future__ import annotations

import logging

import pytest

from service.runtime import ProviderError, select_providers

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_default_prefers_cuda_when_onnxruntime_offers_it():
    assert select_providers(None, [TRT, CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers([], [CPU]) == [CPU]


def test_explicit_lists_keep_their_order_and_accept_full_names():
    assert select_providers("cpu,cuda", [CUDA, CPU]) == [CPU, CUDA]
    assert select_providers(["tensorrt", "CUDAExecutionProvider", "cpu"], [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert select_providers(" CUDA , cpu ", [CUDA, CPU]) == [CUDA, CPU]


def test_unavailable_providers_fall_back_only_when_listed(caplog):
    with caplog.at_level(logging.WARNING):
        assert select_providers("cuda,cpu", [CPU]) == [CPU]
    assert "CUDAExecutionProvider is not available" in caplog.text
    with pytest.raises(ProviderError, match="none of the requested"):
        select_providers("cuda", [CPU])


def test_unknown_provider_names_are_errors():
    with pytest.raises(ProviderError, match="unknown execution provider 'gpu'"):
        select_providers("gpu,cpu", [CPU])


def test_the_provider_in_use_is_reported_and_labelled(make_client):
    with make_client(providers=["cuda", "cpu"]) as c:  # this machine's onnxruntime has CPU only: falls back
        models = c.get("/v1/models").json()["models"]
        assert {m["provider"] for m in models} == {CPU}
        assert c.post("/v1/sentiment", json={"text": "great"}).status_code == 200
        metrics = c.get("/metrics").text
    assert f'sentiment_model_info{{model="tiny-lstm",provider="{CPU}",version="0.0.1"}} 1.0' in metrics
    assert f'sentiment_batch_size_count{{model="tiny-lstm",provider="{CPU}"}} 1.0' in metrics
