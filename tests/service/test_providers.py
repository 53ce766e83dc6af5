"""Execution-provider selection (CUDA when offered, else CPU; explicit lists honoured in order; impossible requests
fail loudly) and that the provider in use is reported by /v1/models and labelled in the metrics."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import runtime
from service.runtime import ModelRuntime, ProviderError, select_providers

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
REPO = Path(__file__).resolve().parents[2]


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


def test_cuda_sessions_are_asked_for_full_fp32_matmuls(monkeypatch):
    # TF32 moved the shipped model's probabilities by 1.6e-4 from CPU on an H100 (3.3e-7 without it): both the
    # scoring and the diagnostics session must ask for CUDA with TF32 off, and the CPU provider stays plain.
    seen = []
    real = runtime.ort.InferenceSession

    def recording(path, opts, providers):
        seen.append(providers)
        return real(path, opts, providers=[CPU])

    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    rt = ModelRuntime(REPO / "exported" / "imdb-lstm")
    assert rt.providers == [CUDA, CPU]
    assert seen == [[(CUDA, {"use_tf32": "0"}), CPU]] * 2


def test_the_provider_in_use_is_reported_and_labelled(make_client):
    with make_client(providers=["cuda", "cpu"]) as c:  # this machine's onnxruntime has CPU only: falls back
        models = c.get("/v1/models").json()["models"]
        assert {m["provider"] for m in models} == {CPU}
        assert c.post("/v1/sentiment", json={"text": "great"}).status_code == 200
        metrics = c.get("/metrics").text
    assert f'sentiment_model_info{{model="tiny-lstm",provider="{CPU}",version="0.0.1"}} 1.0' in metrics
    assert f'sentiment_batch_size_count{{model="tiny-lstm",provider="{CPU}"}} 1.0' in metrics


def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run():
    # `make gpu-check` only runs where a GPU is lent; its dry run keeps the script from rotting in between: every
    # shipped artifact checked for parity at its own tolerance (the int8 twin's is looser), the app reporting it.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", str(REPO / "exported")],
        cwd=REPO,
        env={**os.environ, "GPU_CHECK_PROVIDER": "cpu", "GPU_CHECK_BATCH_REVIEWS": "32"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert report["failures"] == [] and set(report["app"]["models"]) == set(report["models"]) >= {"imdb-lstm"}
    lstm = report["models"]["imdb-lstm"]
    assert lstm["tolerance"] == 1e-4 and lstm["max_abs_diff_probabilities"] <= 1e-4
    assert lstm["long_review"]["tokens"] > 3000
    assert set(lstm["call_budgets"]["device"]) == {"64_texts_4096_tokens_per_s", "256_texts_65536_tokens_per_s"}
    assert report["models"]["imdb-lstm-int8"]["tolerance"] == 1e-2
