"""Export a trained run to the artifact directory the service loads.

    sentiment-export --run runs/lstm --out exported/imdb-lstm

Writes `model.onnx` (plain scoring: calibrated probabilities only), `diagnostics.onnx` (the same network plus
per-layer/per-direction hidden states, gate activations and the running score), `weights.bin` (their shared
weights), `tokenizer.json`, `manifest.json` (config, policy, metrics and the sha256 of every file) and MODEL_CARD.md.

Two graphs because onnxruntime runs every node of a graph whatever outputs are fetched: plain scoring must not pay
for diagnostics. Gates need no second recurrence: given the layer input x_t and the exported h_{t-1} (the hidden
sequence shifted by one step), every gate is one batched matmul over all time steps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto

from service.artifacts import sha256_of
from training import model_card
from training.cells import GATE_NAMES
from training.config import ModelConfig, TrainConfig
from training.models import RecurrentClassifier
from training.onnx_graph import GraphBuilder, externalize, tensor_info

OPSET = 17
SCHEMA_VERSION = 1
# torch packs gates (i, f, g, o) for LSTM and (r, z, n) for GRU; ONNX wants (i, o, f, c) and (z, r, h).
_ONNX_GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
_ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _onnx_weights(modules, kind: str, hidden: int):
    """W [D, G*H, in], R [D, G*H, H], B [D, 2*G*H] in ONNX gate order from per-direction torch modules."""
    order = _ONNX_GATE_ORDER[kind]

    def reorder(w):
        chunks = np.split(_np(w), len(order), axis=0)
        return np.concatenate([chunks[i] for i in order], axis=0)

    W = np.stack([reorder(m.weight_ih_l0) for m in modules])
    R = np.stack([reorder(m.weight_hh_l0) for m in modules])
    B = np.stack([np.concatenate([reorder(m.bias_ih_l0), reorder(m.bias_hh_l0)]) for m in modules])
    return W, R, B


class _Exporter:
    def __init__(self, model: RecurrentClassifier, temperature: float, max_tokens: int):
        self.model, self.cfg = model.eval(), model.cfg
        self.temperature, self.max_tokens = temperature, max_tokens

    def build(self, diagnostics: bool) -> onnx.ModelProto:
        g, cfg = GraphBuilder(), self.cfg
        H, D = cfg.hidden_size, cfg.directions
        emb = g.op("Gather", g.const("embedding", _np(self.model.embedding.weight)), "input_ids")
        x = g.op("Transpose", emb, perm=[1, 0, 2])  # [T, B, E]: ONNX RNN layout
        lens32 = g.op("Cast", "lengths", to=TensorProto.INT32)
        steps = g.op("Gather", g.op("Shape", x), g.ints(0), axis=0)  # [1]
        zero, one = g.const("scalar_0", np.array(0, np.int64)), g.const("scalar_1", np.array(1, np.int64))
        rng = g.op("Range", zero, g.op("Squeeze", steps), one)  # [T]: 0..T-1
        mask_b = g.op("Less", g.op("Unsqueeze", rng, g.ints(1)), g.op("Unsqueeze", "lengths", g.ints(0)))  # [T, B]
        mask = g.op("Unsqueeze", g.op("Cast", mask_b, to=TensorProto.FLOAT), g.ints(2))  # [T, B, 1]
        outputs = []
        for li, layer in enumerate(self.model.layers):
            W, R, B = _onnx_weights(layer.directions, cfg.cell, H)
            p = f"layer{li}"
            y, y_h = g.op(_ONNX_OP[cfg.cell], x, g.const(f"{p}.W", W), g.const(f"{p}.R", R), g.const(f"{p}.B", B),
                          lens32, outputs=2, hidden_size=H, direction="bidirectional" if D == 2 else "forward",
                          **({"linear_before_reset": 1} if cfg.cell == "gru" else {}))
            # [T, D, B, H] -> [T, B, D, H]; zero past each length (the spec leaves those values to the runtime).
            y4 = g.op("Mul", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.op("Unsqueeze", mask, g.ints(3)))
            x_next = g.op("Reshape", y4, g.ints(0, 0, -1))
            if diagnostics:
                outputs.append(self._diagnostics_layer(g, li, layer, x, y4, D))
            x = x_next
        features = self._pool(g, x, mask, mask_b, y_h)
        head_w, head_b = _np(self.model.head.weight), _np(self.model.head.bias)
        logits = g.op("Gemm", features, g.const("head.W", head_w), g.const("head.b", head_b), transB=1,
                      name="logits")
        temp = g.const("temperature", np.array(self.temperature, np.float32))
        g.op("Softmax", g.op("Div", logits, temp), axis=1, name="probabilities")
        outs = [tensor_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
                tensor_info("logits", TensorProto.FLOAT, ["batch", 2])]
        if diagnostics:
            prefix = self._running_features(g, x, mask, mask_b, steps, rng)
            run_logits = g.op("Add", g.op("MatMul", prefix, g.const("head.WT", head_w.T.copy())), "head.b")
            run_probs = g.op("Softmax", g.op("Div", run_logits, temp), axis=2)
            pos = g.op("Gather", run_probs, g.ints(1), axis=2)  # [T, B, 1]
            g.op("Transpose", g.op("Squeeze", g.op("Mul", pos, mask), g.ints(2)), perm=[1, 0], name="running_positive")
            outs.append(tensor_info("running_positive", TensorProto.FLOAT, ["batch", "tokens"]))
            G = len(GATE_NAMES[cfg.cell])
            for hidden, gates in outputs:
                outs.append(tensor_info(hidden, TensorProto.FLOAT, ["batch", "tokens", D, H]))
                if gates:
                    outs.append(tensor_info(gates, TensorProto.FLOAT, ["batch", "tokens", D, G, H]))
        inputs = [tensor_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
                  tensor_info("lengths", TensorProto.INT64, ["batch"])]
        kind = "diagnostics" if diagnostics else "scoring"
        return g.model(inputs, outs, OPSET, doc=f"{cfg.cell} sentiment classifier ({kind})")

    def _pool(self, g: GraphBuilder, x: str, mask: str, mask_b: str, y_h: str) -> str:
        pooling = self.cfg.pooling
        if pooling == "last":
            # Final states: forward after the last real token, backward after reading back to token 0.
            return g.op("Reshape", g.op("Transpose", y_h, perm=[1, 0, 2]), g.ints(0, -1))
        lengths_f = g.op("Unsqueeze", g.op("Cast", "lengths", to=TensorProto.FLOAT), g.ints(1))
        mean = g.op("Div", g.op("ReduceSum", x, g.ints(0), keepdims=0), lengths_f)
        neg = g.const("neg_inf", np.array(-np.inf, np.float32))
        mx = g.op("ReduceMax", g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), x, neg), axes=[0], keepdims=0)
        return {"mean": mean, "max": mx}.get(pooling) or g.op("Concat", mean, mx, axis=1)

    def _running_features(self, g: GraphBuilder, x: str, mask: str, mask_b: str, steps: str, rng: str) -> str:
        """Features [T, B, F] pooled over the prefix 0..t (see the running score in the README)."""
        pooling, H = self.cfg.pooling, self.cfg.hidden_size
        if pooling == "last":
            if self.cfg.directions == 1:
                return x
            # Forward state at t; the backward half is its final state (it has read the whole review).
            fwd = g.op("Slice", x, g.ints(0), g.ints(H), g.ints(2))
            bwd0 = g.op("Slice", x, g.ints(0), g.ints(1), g.ints(0))  # position 0, backward half
            bwd0 = g.op("Slice", bwd0, g.ints(H), g.ints(2 * H), g.ints(2))
            return g.op("Concat", fwd, g.op("Expand", bwd0, g.op("Shape", fwd)), axis=2)
        parts = []
        if pooling in ("mean", "meanmax"):
            count = g.op("Cast", g.op("Add", rng, g.ints(1)), to=TensorProto.FLOAT)
            parts.append(g.op("Div", g.op("CumSum", x, g.ints(0)), g.op("Unsqueeze", count, g.ints(1, 2))))
        if pooling in ("max", "meanmax"):
            neg = g.const("neg_inf", np.array(-np.inf, np.float32))
            m = g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), x, neg)
            # Prefix maximum by doubling (Hillis-Steele): log2(max_tokens) shifted maxima, no recurrence.
            shift = 1
            while shift < max(2, self.max_tokens):
                padded = g.op("Pad", m, g.ints(shift, 0, 0, 0, 0, 0), neg)
                m = g.op("Max", m, g.op("Slice", padded, g.ints(0), steps, g.ints(0)))
                shift *= 2
            parts.append(m)
        return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=2)

    def _diagnostics_layer(self, g: GraphBuilder, li: int, layer, x_in: str, y4: str, D: int):
        """Expose hidden states [B, T, D, H] and recompute gates [B, T, D, G, H] from x_t and h_{t-1}."""
        hidden = g.op("Transpose", y4, perm=[1, 0, 2, 3], name=f"hidden_{li}")
        kind = self.cfg.cell
        if kind == "rnn":
            return hidden, None
        per_dir = []
        for d, module in enumerate(layer.directions):
            h = g.op("Squeeze", g.op("Slice", y4, g.ints(d), g.ints(d + 1), g.ints(2)), g.ints(2))  # [T, B, H]
            if d == 0:  # h_{t-1}: shift down, zeros first
                prev = g.op("Slice", g.op("Pad", h, g.ints(1, 0, 0, 0, 0, 0)), g.ints(0), g.ints(-1), g.ints(0))
            else:  # the backward direction's previous state is the one at t+1 (zero past the length)
                prev = g.op("Pad", g.op("Slice", h, g.ints(1), g.ints(2**62), g.ints(0)), g.ints(0, 0, 0, 1, 0, 0))
            p = f"layer{li}.dir{d}"
            ax = g.op("Add", g.op("MatMul", x_in, g.const(f"{p}.w_ihT", _np(module.weight_ih_l0).T.copy())),
                      g.const(f"{p}.b_ih", _np(module.bias_ih_l0)))
            ah = g.op("Add", g.op("MatMul", prev, g.const(f"{p}.w_hhT", _np(module.weight_hh_l0).T.copy())),
                      g.const(f"{p}.b_hh", _np(module.bias_hh_l0)))
            if kind == "lstm":
                i, f, c, o = g.op("Split", g.op("Add", ax, ah), axis=2, outputs=4)
                gates = [g.op("Sigmoid", i), g.op("Sigmoid", f), g.op("Tanh", c), g.op("Sigmoid", o)]
            else:
                xr, xz, xn = g.op("Split", ax, axis=2, outputs=3)
                hr, hz, hn = g.op("Split", ah, axis=2, outputs=3)
                r = g.op("Sigmoid", g.op("Add", xr, hr))
                gates = [r, g.op("Sigmoid", g.op("Add", xz, hz)), g.op("Tanh", g.op("Add", xn, g.op("Mul", r, hn)))]
            per_dir.append(g.op("Concat", *[g.op("Unsqueeze", a, g.ints(2)) for a in gates], axis=2))  # [T,B,G,H]
        stacked = g.op("Concat", *[g.op("Unsqueeze", a, g.ints(2)) for a in per_dir], axis=2)  # [T,B,D,G,H]
        return hidden, g.op("Transpose", stacked, perm=[1, 0, 2, 3, 4], name=f"gates_{li}")


def source_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_command(cfg: TrainConfig) -> str:
    """The `sentiment-train` command that reproduces this run (every non-default setting spelled out)."""
    parts, default, default_model = ["sentiment-train"], TrainConfig(), ModelConfig()
    for obj, ref in ((cfg, default), (cfg.model, default_model)):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("model", "vocab_size", "num_labels") or value == getattr(ref, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            parts += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(parts)  # quoted: paths and names may contain spaces


def load_run(run_dir: str | Path) -> tuple[RecurrentClassifier, dict]:
    saved = torch.load(Path(run_dir) / "model.pt", weights_only=False)
    model = RecurrentClassifier(saved["model_config"])
    model.load_state_dict(saved["model"])
    return model.eval(), saved


def export_model(model: RecurrentClassifier, tokenizer_json: str, out: Path, *, name: str, version: str,
                 train_cfg: TrainConfig, metrics: dict, temperature: float = 1.0, comparison: str | None = None,
                 notes: str | None = None) -> dict:
    """Write a complete artifact directory; returns its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = _Exporter(model, temperature, train_cfg.max_tokens)
    graphs = {"model.onnx": exporter.build(diagnostics=False), "diagnostics.onnx": exporter.build(diagnostics=True)}
    externalize(graphs, out / "weights.bin")
    for fname, graph in graphs.items():
        onnx.save(graph, out / fname)
        onnx.checker.check_model(str(out / fname))
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    cfg = model.cfg
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "labels": ["negative", "positive"],
        "model": {**asdict(cfg), "directions": cfg.directions, "gates": list(GATE_NAMES[cfg.cell])},
        "tokenizer": {"file": "tokenizer.json", "vocab_size": json.loads(tokenizer_json)["model"]["vocab"].__len__(),
                      "pad_id": 0, "unk_token": "[UNK]"},
        "max_tokens": train_cfg.max_tokens,
        "truncation": {"strategy": train_cfg.truncation, "head_tokens": train_cfg.head_tokens,
                       "note": "reviews longer than max_tokens keep their first head_tokens and last "
                               "max_tokens - head_tokens tokens (head_tail); verdicts tend to sit at the end"},
        "temperature": temperature,
        "onnx": {"opset": OPSET, "scoring": "model.onnx", "diagnostics": "diagnostics.onnx",
                 "inputs": {"input_ids": "int64 [batch, tokens]", "lengths": "int64 [batch]"}},
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "history": metrics.get("history", []),
        "training": {"command": train_command(train_cfg), "config": {k: v for k, v in asdict(train_cfg).items()
                                                                      if k != "model"},
                     "source_commit": source_commit()},
    }
    manifest["files"] = {}
    model_card.write(out, manifest, comparison, notes)
    manifest["files"] = {p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
                         for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentiment-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="training run folder (holds model.pt)")
    parser.add_argument("--out", required=True, help="artifact directory to write, e.g. exported/imdb-lstm")
    parser.add_argument("--name", help="model name (default: the run's name)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--comparison", help="markdown table from training.sweep to include in MODEL_CARD.md")
    parser.add_argument("--notes", help="markdown file of extra notes for MODEL_CARD.md")
    args = parser.parse_args(argv)
    try:
        model, saved = load_run(args.run)
    except FileNotFoundError as exc:
        print(f"sentiment-export: error: {exc}", file=sys.stderr)
        return 2
    metrics = saved["metrics"]
    manifest = export_model(model, saved["tokenizer_json"], Path(args.out), name=args.name or saved["train_config"].name,
                            version=args.version, train_cfg=saved["train_config"], metrics=metrics,
                            temperature=metrics.get("temperature", 1.0), comparison=args.comparison, notes=args.notes)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"exported {manifest['name']} {manifest['version']} to {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
