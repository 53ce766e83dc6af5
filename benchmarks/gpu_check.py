"""GPU check of the service (run by benchmarks/gpu_check.sh in a venv with onnxruntime-gpu, on a machine with a GPU):

1. provider selection: onnxruntime offers CUDA, the default selection puts it first, `SENTIMENT_PROVIDERS=cuda`
   really runs on CUDA (onnxruntime silently falls back to CPU when the CUDA libraries do not load: caught here);
2. parity: every shipped artifact scores the same texts on CPU and CUDA within 1e-4 (probabilities, running scores
   and gate means of the diagnostics graph; 1e-2 for an int8 twin);
3. the HTTP app reports and labels the provider (/v1/models, /metrics);
4. timings on both providers (batch 1 and 32, one 20,000-character review plain and with diagnostics, and 512
   reviews at the CPU-sized and a GPU-sized call budget), for information (GPU_CHECK_BATCH_REVIEWS=N: N reviews).

    python -m benchmarks.gpu_check [MODEL_ROOT]      (GPU_CHECK_PROVIDER=cpu runs it on a CPU-only machine: a dry run)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.bench import REPO, synthetic_reviews
from service.artifacts import discover
from service.runtime import CALL_TOKENS, PROVIDER_ALIASES, ModelRuntime, select_providers

TOLERANCE = 1e-4
# An int8 twin quantizes its activations per call, and its DynamicQuantizeLSTM is a CPU-only contrib op whose result
# already moves between one and two CPU threads (~2e-3 for 2.3.0's twin, 5.1e-3 for 2.4.0's, whose mix weighs the
# int8 n-gram lookups more): a 1e-4 bar would test thread counts, not CUDA.
QUANTIZED_TOLERANCE = 1e-2


def median_ms(fn, items) -> float:
    fn(items[0])
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


# The call budgets the batch comparison tries: the CPU-sized default and one sized for a GPU (`--batch-size` and
# `--max-batch-tokens` of sentiment-score, SENTIMENT_MAX_BATCH_ITEMS / _TOKENS of the service).
CALL_BUDGETS = ((64, CALL_TOKENS), (256, 65_536))


def call_budgets(rt: ModelRuntime, encoded: list) -> dict:
    """Reviews per second through `ModelRuntime.predict` at each call budget (median of three passes after a warm-up)."""
    out = {}
    for items, tokens in CALL_BUDGETS:
        ms = median_ms(lambda budget: rt.predict(encoded, *budget), [(items, tokens)] * 3)
        out[f"{items}_texts_{tokens}_tokens_per_s"] = round(len(encoded) / ms * 1e3, 1)
    return out


def check_model(directory: Path, device: str, failures: list[str]) -> dict:
    cpu = ModelRuntime(directory, providers="cpu", intra_op_threads=1)
    dev = ModelRuntime(directory, providers=device)
    wanted = PROVIDER_ALIASES[device]
    if dev.provider != wanted:
        failures.append(f"{directory}: asked for {wanted}, the session runs on {dev.provider} (CUDA libraries missing?)")
    # Reviews of about two synthetic ones each (~550 tokens, IMDB's long side) for the call-budget comparison;
    # GPU_CHECK_BATCH_REVIEWS shortens it (the CPU dry run in the tests). One draw: the vocabulary is read once.
    n = int(os.environ.get("GPU_CHECK_BATCH_REVIEWS", "512"))
    drawn = synthetic_reviews(directory / "tokenizer.json", 128 + 2 * n + 200, seed=1)
    texts, pairs, long_parts = drawn[:128], drawn[128 : 128 + 2 * n], drawn[128 + 2 * n :]
    encoded = cpu.encode(texts)
    p_cpu, p_dev = cpu.predict(encoded), dev.predict(encoded)
    prob_diff = float(np.abs(p_cpu - p_dev).max())
    diag_diff = 0.0
    for text, enc in zip(texts[:8], encoded[:8]):
        (_, a), (_, b) = cpu.diagnose(text, enc), dev.diagnose(text, enc)
        diag_diff = max(diag_diff, max(abs(x["running_score"] - y["running_score"]) for x, y in zip(a["tokens"], b["tokens"])))
        for la, lb in zip(a["layers"], b["layers"]):
            for gate in la["gate_mean"]:
                diag_diff = max(diag_diff, float(np.abs(np.subtract(la["gate_mean"][gate], lb["gate_mean"][gate])).max()))
    tolerance = QUANTIZED_TOLERANCE if "quantization" in cpu.manifest else TOLERANCE
    if max(prob_diff, diag_diff) > tolerance:
        failures.append(f"{directory}: CPU vs {dev.provider} differ by {max(prob_diff, diag_diff):.2e} > {tolerance}")
    singles, b32 = [[e] for e in encoded[:40]], [encoded[i : i + 32] for i in range(0, 128, 32)]
    batch = cpu.encode([pairs[i] + " " + pairs[i + 1] for i in range(0, 2 * n, 2)])
    long_text = " ".join(long_parts)[:20_000]
    long_enc = cpu.encode([long_text])[0]
    return {
        "provider": dev.provider,
        "tolerance": tolerance,
        "max_abs_diff_probabilities": prob_diff,
        "max_abs_diff_diagnostics": diag_diff,
        "cpu_batch1_ms": median_ms(cpu.run_batch, singles),
        "device_batch1_ms": median_ms(dev.run_batch, singles),
        "cpu_batch32_ms": median_ms(cpu.run_batch, b32),
        "device_batch32_ms": median_ms(dev.run_batch, b32),
        "call_budgets": {"cpu": call_budgets(cpu, batch), "device": call_budgets(dev, batch)},
        "long_review": {  # one 20,000-character review, whole (the README's CPU figure is for this length)
            "tokens": len(long_enc.ids),
            "cpu_ms": median_ms(cpu.run_batch, [[long_enc]] * 5),
            "device_ms": median_ms(dev.run_batch, [[long_enc]] * 5),
            "cpu_diagnostics_ms": median_ms(lambda e: cpu.diagnose(long_text, e), [long_enc] * 3),
            "device_diagnostics_ms": median_ms(lambda e: dev.diagnose(long_text, e), [long_enc] * 3),
        },
    }


def check_app(root: Path, device: str, failures: list[str]) -> dict:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    wanted = PROVIDER_ALIASES[device]
    with TestClient(create_app(Settings(model_root=root, providers=list(dict.fromkeys([device, "cpu"]))))) as client:
        models = client.get("/v1/models").json()["models"]
        scored = client.post("/v1/sentiment", json={"text": "A wonderful, moving film."}).status_code
        metrics = client.get("/metrics").text
    if any(m["provider"] != wanted for m in models) or scored != 200:
        failures.append(f"/v1/models reports {[m['provider'] for m in models]}, scoring answered {scored}")
    if f'provider="{wanted}"' not in metrics:
        failures.append(f'/metrics has no provider="{wanted}" label')
    return {"models": {m["name"]: m["provider"] for m in models}}


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SENTIMENT_MODEL_ROOT", REPO / "exported"))
    device = os.environ.get("GPU_CHECK_PROVIDER", "cuda")
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels the venv installed, when the system has none
    available = ort.get_available_providers()
    failures: list[str] = []
    report = {
        "onnxruntime": ort.__version__,
        "device": ort.get_device(),
        "available": available,
        "default_selection": select_providers(None, available),
    }
    if PROVIDER_ALIASES[device] not in available:
        print(json.dumps(report, indent=2))
        print(f"gpu-check: FAILED: this onnxruntime offers no {PROVIDER_ALIASES[device]}", file=sys.stderr)
        return 1
    if device == "cuda" and report["default_selection"][0] != "CUDAExecutionProvider":
        failures.append(f"default selection {report['default_selection']} does not start with CUDA")
    report["models"] = {d.name: check_model(d, device, failures) for d in discover(root)}
    report["app"] = check_app(root, device, failures)
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    print(
        "gpu-check: " + ("FAILED:\n  " + "\n  ".join(failures) if failures else "passed"),
        file=sys.stderr if failures else sys.stdout,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
