"""Owns the onnxruntime sessions and the one scoring path used by the HTTP service, the batch CLI and Ray.

A `ModelRuntime` is one verified artifact directory: tokenizer + truncation policy from the manifest, a scoring
session (`model.onnx`, probabilities only) and a diagnostics session (`diagnostics.onnx`, used only when asked).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from service import diagnostics
from service.artifacts import ArtifactError, load_manifest
from service.exceptions import NoTokens
from service.tokenization import Encoded, TextTokenizer, Truncation

log = logging.getLogger("sentiment.runtime")

PROVIDER_ALIASES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


# Padded tokens per onnxruntime call when computing occlusion attribution (see ModelRuntime.occlusion).
OCCLUSION_TOKENS = 8_192
# Padded tokens per onnxruntime call, by default (the service's SENTIMENT_MAX_BATCH_TOKENS, the batch CLI's calls).
# Measured on 400 IMDB reviews, one thread: calls of 2,048-4,096 tokens score as fast as 16,384-token ones or faster
# (less padding, intermediates that stay in cache) and the session's memory arena then peaks at ~220 MB of process
# RSS instead of ~340 MB: the LSTM's input projection alone is tokens x 4H floats per call.
CALL_TOKENS = 4_096
# A call stops growing at a text longer than this multiple of its shortest one (plus a little slack for tiny texts):
# beyond it, padding the short texts costs more than another call's overhead.
LENGTH_RATIO, LENGTH_SLACK = 2.0, 16
K = TypeVar("K")  # what identifies an item in plan_calls


def plan_calls(items: list[tuple[K, int]], max_items: int, max_tokens: int) -> list[list[tuple[K, int]]]:
    """Cut (key, length) items into onnxruntime calls, shortest first: each call holds at most `max_items`, at most
    `max_tokens` padded tokens (unless one text alone is longer), and no text much longer than its shortest."""
    calls: list[list[tuple[K, int]]] = []
    current: list[tuple[K, int]] = []
    for item in sorted(items, key=lambda kv: kv[1]):
        length = item[1]
        if current:
            shortest = current[0][1]
            too_many = len(current) + 1 > max_items
            too_long = (len(current) + 1) * length > max_tokens
            too_far = length > LENGTH_RATIO * shortest + LENGTH_SLACK
            if too_many or too_long or too_far:
                calls.append(current)
                current = []
        current.append(item)
    if current:
        calls.append(current)
    return calls


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory freed by earlier onnxruntime calls back to the OS. The sessions run without onnxruntime's
    arena (which keeps its peak for the process's life), so a call's buffers go back to malloc when it ends; glibc
    keeps freed pages mapped for reuse, and `malloc_trim` returns them. The batcher calls this once its model has
    been idle a moment (service/batching.py), so a busy worker reuses its memory and an idle one shrinks."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ProviderError(ValueError):
    """Requested execution providers that this onnxruntime build cannot give."""


NoTokensError = NoTokens  # the name callers used before the core's errors had their own module


def select_providers(requested: str | list[str] | None, available: list[str]) -> list[str]:
    """Execution providers to ask onnxruntime for, in priority order.

    None/empty: CUDA when this onnxruntime offers it, then CPU. Otherwise the requested ones (short names like
    "cuda,cpu" or full provider names) that are available, in the given order; unknown names and a request that
    leaves nothing available are errors, so a misconfigured GPU deployment fails loudly instead of crawling on CPU
    (list "cpu" last to allow the fallback)."""
    if not requested:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    chosen = []
    for raw in (n.strip() for n in names if n.strip()):
        full = PROVIDER_ALIASES.get(raw.lower(), raw)
        if full not in PROVIDER_ALIASES.values() and full not in available:
            raise ProviderError(f"unknown execution provider {raw!r} (known: {', '.join(PROVIDER_ALIASES)})")
        if full in available:
            chosen.append(full)
        else:
            log.warning("execution provider %s is not available in this onnxruntime build", full)
    if not chosen:
        raise ProviderError(f"none of the requested providers {names} is available (available: {available})")
    return chosen


# TF32 (on by default in onnxruntime's CUDA provider) rounds matmul inputs to 10-bit mantissas: on an H100 the
# shipped LSTM's probabilities then moved by up to 1.6e-4 from CPU, and with it off by 3.3e-7, at the same speed
# (batch 32: 10.6 ms off, 11.4 ms on; `make gpu-check`). This model is launch-bound, so full fp32 costs nothing.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def provider_entries(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """`providers` as onnxruntime's InferenceSession takes them, each with the options we set for it."""
    return [(p, PROVIDER_OPTIONS[p]) if p in PROVIDER_OPTIONS else p for p in providers]


class ModelRuntime:
    def __init__(
        self,
        directory: str | Path,
        providers: str | list[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        verify: bool = True,
        diagnostics_threads: int | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory, verify=verify)
        m = self.manifest
        self.name, self.version, self.labels = m["name"], m["version"], list(m["labels"])
        self.positive = self.labels.index("positive")
        self.temperature = float(m.get("temperature") or 1.0)
        trunc = m["truncation"]
        try:
            self.tokenizer = TextTokenizer.from_file(
                self.directory / "tokenizer.json",
                max_tokens=int(m["max_tokens"]),
                truncation=trunc["strategy"],
                head_tokens=int(trunc["head_tokens"]),
            )
        except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
            raise ArtifactError(f"{self.directory / 'tokenizer.json'}: cannot load ({exc})") from exc
        vocab = self.tokenizer.vocab_size
        expected = {m["tokenizer"].get("vocab_size"), m["model"].get("vocab_size")}
        if expected != {vocab}:
            raise ArtifactError(
                f"{self.directory / 'tokenizer.json'}: {vocab} tokens, but the manifest's model "
                f"expects {sorted(x for x in expected if x is not None)}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        # Fatal only: every onnxruntime error also reaches Python as an exception, which we log or report once;
        # its own copy would be a second, raw line (e.g. before sentiment-serve's one-line start-up error).
        opts.log_severity_level = 4
        # No CPU arena: it grows to the largest call's working set and never shrinks (a worker sat at ~200 MB after
        # a load test); plain malloc reuses freed buffers as well, and `release_freed_memory` can return them.
        # Scoring speed is the same either way (measured: long and short reviews within noise).
        opts.enable_cpu_mem_arena = False
        self.providers = select_providers(providers, ort.get_available_providers())
        self.session = self._session("model.onnx", opts)
        if diagnostics_threads is not None:
            opts.intra_op_num_threads = diagnostics_threads
        self.diagnostics_session = self._session("diagnostics.onnx", opts)
        self.provider = self.session.get_providers()[0]
        self.diagnostic_outputs = [o.name for o in self.diagnostics_session.get_outputs()]
        self.facts = diagnostics.ModelFacts.from_manifest(m, self.tokenizer.tokenizer.id_to_token, self.tokenizer.unk_id)
        self.warmup()
        log.info("loaded model %s %s from %s on %s", self.name, self.version, self.directory, self.provider)

    def _session(self, fname: str, opts: ort.SessionOptions) -> ort.InferenceSession:
        path = self.directory / fname
        try:
            session = ort.InferenceSession(str(path), opts, providers=provider_entries(self.providers))
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise ArtifactError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        names = {i.name for i in session.get_inputs()}
        if names != {"input_ids", "lengths"}:
            raise ArtifactError(f"{path}: inputs {sorted(names)}, expected input_ids and lengths")
        return session

    def warmup(self) -> None:
        """A real inference that also proves the model's embedding table covers the tokenizer's highest id."""
        probe = Encoded(np.array([self.tokenizer.vocab_size - 1, self.tokenizer.unk_id], np.int64), [(0, 1)] * 2, 2, False)
        try:
            probs = self.run_batch([probe])
        except Exception as exc:
            raise ArtifactError(f"{self.directory / 'model.onnx'}: does not accept this tokenizer's ids ({exc})") from exc
        if probs.shape != (1, len(self.labels)) or not np.all(np.isfinite(probs)):
            raise ArtifactError(f"{self.directory / 'model.onnx'}: warm-up produced {probs!r}")

    @property
    def info(self) -> dict:
        m = self.manifest
        metrics = m.get("metrics", {})
        return {
            "name": self.name,
            "version": self.version,
            "labels": self.labels,
            "provider": self.provider,
            "cell": m["model"].get("cell"),
            "layers": m["model"].get("num_layers"),
            "directions": m["model"].get("directions"),
            "hidden_size": m["model"].get("hidden_size"),
            "pooling": m["model"].get("pooling"),
            "vocab_size": self.tokenizer.vocab_size,
            "max_tokens": self.tokenizer.max_tokens,
            "truncation": m["truncation"].get("strategy"),
            "temperature": m.get("temperature"),
            "validation_accuracy": metrics.get("val_accuracy"),
            "ece_after_calibration": metrics.get("ece_after"),
        }

    # -- scoring ---------------------------------------------------------------------------------------------
    def encode(self, texts: list[str], truncation: Truncation | None = None) -> list[Encoded]:
        return self.tokenizer.encode_batch(texts, truncation)

    @staticmethod
    def pad(encoded: list[Encoded]) -> dict[str, np.ndarray]:
        lengths = np.array([e.num_tokens for e in encoded], dtype=np.int64)
        if lengths.min(initial=1) < 1:
            raise NoTokensError("text has no tokens after cleaning")
        ids = np.zeros((len(encoded), int(lengths.max())), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : e.num_tokens] = e.ids
        return {"input_ids": ids, "lengths": lengths}

    def run_batch(self, encoded: list[Encoded]) -> np.ndarray:
        """One onnxruntime call: calibrated probabilities [N, labels]."""
        return self.session.run(["probabilities"], self.pad(encoded))[0]

    def predict(self, encoded: list[Encoded], batch_size: int = 64, max_tokens: int = CALL_TOKENS) -> np.ndarray:
        """Probabilities for any number of texts: scored in length-sorted calls of at most `batch_size` texts and
        `max_tokens` padded tokens (`plan_calls`, as the service's micro-batcher), returned in input order."""
        out = np.empty((len(encoded), len(self.labels)), dtype=np.float32)
        for call in plan_calls([(i, e.num_tokens) for i, e in enumerate(encoded)], batch_size, max_tokens):
            rows = [i for i, _ in call]
            out[rows] = self.run_batch([encoded[i] for i in rows])
        return out

    def result(self, enc: Encoded, probs: np.ndarray) -> dict:
        """The response fields every interface shares."""
        label = self.labels[int(np.argmax(probs))]
        return {
            "label": label,
            "score": float(probs[self.positive]),
            "probabilities": {lab: float(p) for lab, p in zip(self.labels, probs)},
            "num_tokens": enc.num_tokens,
            "truncated": enc.truncated,
        }

    # -- diagnostics -------------------------------------------------------------------------------------------
    def diagnose(
        self, text: str, enc: Encoded, include_hidden: bool = False, attribution: bool = False, max_hidden_values: int = 65_536
    ) -> tuple[np.ndarray, dict]:
        """Probabilities and the per-token diagnostics of one text (see service/diagnostics.py)."""
        outputs = dict(zip(self.diagnostic_outputs, self.diagnostics_session.run(None, self.pad([enc]))))
        final_logodds = float(self.logodds(outputs["logits"])[0])
        # Models without exact contributions fall back to occlusion, within its bound.
        wanted = attribution or "contribution" not in outputs
        occlusion = self.occlusion(enc) if wanted and enc.num_tokens <= diagnostics.OCCLUSION_MAX_TOKENS else None
        report = diagnostics.build(
            self.facts, text, enc, outputs, include_hidden, max_hidden_values, occlusion, final_logodds, attribution
        )
        if attribution and occlusion is None:
            report["summary"]["attribution_note"] = (
                f"attribution (occlusion) skipped: {enc.num_tokens} tokens, over the limit of {diagnostics.OCCLUSION_MAX_TOKENS}"
            )
        return outputs["probabilities"][0], report

    def logodds(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated positive log-odds from the graph's logits (softmax of logits / temperature)."""
        diff = logits[:, self.positive].astype(np.float64) - logits[:, 1 - self.positive].astype(np.float64)
        return diff / self.temperature

    def occlusion(self, enc: Encoded) -> np.ndarray:
        """Positive log-odds with each token in turn replaced by [UNK]: the T masked copies, scored in calls of at
        most OCCLUSION_TOKENS padded tokens. One call of all T x T would hold onnxruntime buffers that grow with
        T^2 (over 1 GB for a 400-token review), and its arena keeps them."""
        n = enc.num_tokens
        ids = np.tile(enc.ids, (n, 1))
        ids[np.arange(n), np.arange(n)] = self.tokenizer.unk_id
        rows = max(1, OCCLUSION_TOKENS // n)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, rows):
            feed = {"input_ids": ids[start : start + rows], "lengths": np.full(len(ids[start : start + rows]), n, np.int64)}
            out[start : start + rows] = self.logodds(self.session.run(["logits"], feed)[0])
        return out
