"""The ONNX graphs of a trained `RecurrentClassifier`: plain scoring and diagnostics.

Two graphs because onnxruntime runs every node of a graph whatever outputs are fetched: plain scoring must not pay
for diagnostics. Gates need no second recurrence: given the layer input x_t and the exported h_{t-1} (the hidden
sequence shifted by one step), every gate is one batched matmul over all time steps.

What the diagnostics graph claims (the README's Diagnostics section says it for users):
- `running_logodds[t]` is the model's answer for the text cut after token t. For a unidirectional encoder it is
  exact: the forward state at t has read only the prefix, cumulative mean / cumulative max pool the prefix's states,
  and the n-gram branch is a prefix sum. A bidirectional encoder has no such reading (its backward half has read the
  whole text), so it gets no running score.
- `contribution[t]` splits the final log-odds exactly: baseline + sum_t contribution[t] = log-odds. Token t is
  credited with the state change it caused, dh_t = h_t - h_{t-1} (h_{-1} = the state after an all-zero input, the
  "nothing read" reference), weighted by how much of it reaches the pooled features: (L - t) / L of it through the
  mean, all of it for each unit whose maximum comes at or after t through the max. N-gram weights are shared equally
  between the tokens of each n-gram. Unidirectional encoders only.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

from training.cells import GATE_NAMES
from training.models import RecurrentClassifier
from training.onnx_graph import GraphBuilder, tensor_info

OPSET = 17
# torch packs gates (i, f, g, o) for LSTM and (r, z, n) for GRU; ONNX wants (i, o, f, c) and (z, r, h).
_ONNX_GATE_ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
_ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _onnx_weights(modules, kind: str):
    """W [D, G*H, in], R [D, G*H, H], B [D, 2*G*H] in ONNX gate order from per-direction torch modules."""
    order = _ONNX_GATE_ORDER[kind]

    def reorder(w):
        chunks = np.split(_np(w), len(order), axis=0)
        return np.concatenate([chunks[i] for i in order], axis=0)

    W = np.stack([reorder(m.weight_ih_l0) for m in modules])
    R = np.stack([reorder(m.weight_hh_l0) for m in modules])
    B = np.stack([np.concatenate([reorder(m.bias_ih_l0), reorder(m.bias_hh_l0)]) for m in modules])
    return W, R, B


@torch.no_grad()
def empty_state(model: RecurrentClassifier) -> np.ndarray:
    """The last layer's output after one all-zero input (the [PAD] embedding): the "nothing read" reference state."""
    x = torch.zeros(1, 1, model.cfg.embedding_dim)
    for layer in model.layers:
        x = layer.directions[0](x)[0]
    return _np(x[0, 0])


def supports_exact_diagnostics(cfg) -> bool:
    return not cfg.bidirectional


class GraphExporter:
    def __init__(self, model: RecurrentClassifier, temperature: float, max_tokens: int):
        self.model, self.cfg = model.eval(), model.cfg
        self.temperature, self.max_tokens = temperature, max_tokens
        head_w, head_b = _np(model.head.weight), _np(model.head.bias)
        mix = _np(model.mix) if self.cfg.ngram_buckets else np.array([1.0, 0.0, 0.0], np.float32)
        # Everything downstream of pooling is linear in the pooled features: fold head difference, mix and
        # temperature into one weight vector and bias giving positive log-odds directly.
        scale = mix[0] / temperature
        self.w_lo = ((head_w[1] - head_w[0]) * scale).astype(np.float32)
        self.b_lo = np.float32((head_b[1] - head_b[0]) * scale + mix[2] / temperature)
        self.ngram_scale = np.float32(mix[1] / temperature)

    # -- shared pieces ----------------------------------------------------------------------------------------
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
        layer_outputs = []
        y_h = None
        for li, layer in enumerate(self.model.layers):
            W, R, B = _onnx_weights(layer.directions, cfg.cell)
            p = f"layer{li}"
            y, y_h = g.op(
                _ONNX_OP[cfg.cell],
                x,
                g.const(f"{p}.W", W),
                g.const(f"{p}.R", R),
                g.const(f"{p}.B", B),
                lens32,
                outputs=2,
                hidden_size=H,
                direction="bidirectional" if D == 2 else "forward",
                **({"linear_before_reset": 1} if cfg.cell == "gru" else {}),
            )
            # [T, D, B, H] -> [T, B, D, H]; zero past each length (the spec leaves those values to the runtime).
            y4 = g.op("Mul", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.op("Unsqueeze", mask, g.ints(3)))
            if diagnostics:
                layer_outputs.append(self._diagnostics_layer(g, li, layer, x, y4, D))
            x = g.op("Reshape", y4, g.ints(0, 0, -1))
        features = self._pool(g, x, mask_b, y_h)
        temp = g.const("temperature", np.array(self.temperature, np.float32))
        ngram_w = self._ngram_weights(g) if cfg.ngram_buckets else None  # [B, T, order]
        ngram = self._ngram_per_position(g, ngram_w, mask_b) if ngram_w else None  # [T, B]
        if ngram is None:
            # The head's own logits, as trained; probabilities = softmax(logits / temperature).
            logits = g.op(
                "Gemm",
                features,
                g.const("head.W", _np(self.model.head.weight)),
                g.const("head.b", _np(self.model.head.bias)),
                transB=1,
                name="logits",
            )
        else:
            # Calibrated log-odds z of head + n-gram branch, as two-label logits [-z/2, z/2] times the temperature,
            # so the same softmax(logits / temperature) contract holds.
            z = g.op(
                "Add", g.op("Squeeze", self._logodds(g, features), g.ints(1)), g.op("ReduceSum", ngram, g.ints(0), keepdims=0)
            )
            half = g.op(
                "Mul", g.op("Unsqueeze", z, g.ints(1)), g.op("Mul", temp, g.const("scalar_half", np.array(0.5, np.float32)))
            )
            logits = g.op("Concat", g.op("Neg", half), half, axis=1, name="logits")
        g.op("Softmax", g.op("Div", logits, temp), axis=1, name="probabilities")
        outs = [
            tensor_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            tensor_info("logits", TensorProto.FLOAT, ["batch", 2]),
        ]
        if diagnostics:
            outs += self._diagnostic_outputs(g, x, mask, mask_b, steps, rng, ngram, ngram_w, layer_outputs)
        inputs = [
            tensor_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            tensor_info("lengths", TensorProto.INT64, ["batch"]),
        ]
        kind = "diagnostics" if diagnostics else "scoring"
        return g.model(inputs, outs, OPSET, doc=f"{cfg.cell} sentiment classifier ({kind})")

    def _logodds(self, g: GraphBuilder, features: str) -> str:
        """Calibrated positive log-odds [..., 1] of the head (mix and temperature folded in) from pooled features."""
        w_lo = g.const("head.w_lo", self.w_lo[:, None])  # [F, 1]
        return g.op("Add", g.op("MatMul", features, w_lo), g.const("head.b_lo", np.array([self.b_lo], np.float32)))

    def _pool(self, g: GraphBuilder, x: str, mask_b: str, y_h: str) -> str:
        pooling = self.cfg.pooling
        if pooling == "last":
            # Final states: forward after the last real token, backward after reading back to token 0.
            return g.op("Reshape", g.op("Transpose", y_h, perm=[1, 0, 2]), g.ints(0, -1))
        lengths_f = g.op("Unsqueeze", g.op("Cast", "lengths", to=TensorProto.FLOAT), g.ints(1))
        mean = g.op("Div", g.op("ReduceSum", x, g.ints(0), keepdims=0), lengths_f)
        neg = g.const("neg_inf", np.array(-np.inf, np.float32))
        mx = g.op("ReduceMax", g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), x, neg), axes=[0], keepdims=0)
        return {"mean": mean, "max": mx}.get(pooling) or g.op("Concat", mean, mx, axis=1)

    @staticmethod
    def _ngram_per_position(g: GraphBuilder, ngram_w: str, mask_b: str) -> str:
        """[T, B] n-gram log-odds owned by each position (the n-grams ending there), zero past each length."""
        per_position = g.op("ReduceSum", ngram_w, g.ints(2), keepdims=0)  # [B, T]
        return g.op("Mul", g.op("Transpose", per_position, perm=[1, 0]), g.op("Cast", mask_b, to=TensorProto.FLOAT))

    def _ngram_weights(self, g: GraphBuilder) -> str:
        """[B, T, order] scaled table weights of the n-grams ending at each position (training/ngrams.py's rows)."""
        cfg = self.cfg
        v1, buckets, order = cfg.vocab_size + 1, cfg.ngram_buckets, cfg.ngram_order
        table = g.const("ngram.table", (_np(self.model.ngram.weight)[:, 0] * self.ngram_scale).astype(np.float32))
        padded = g.op("Pad", "input_ids", g.ints(0, order - 1, 0, 0), g.const("bos_id", np.array(cfg.vocab_size, np.int64)))
        unigram = "input_ids"
        if cfg.negation_window:
            unigram = g.op(
                "Add",
                unigram,
                g.op("Mul", g.op("Cast", self._negation_scope(g), to=TensorProto.INT64), g.ints(v1 + (order - 1) * buckets)),
            )
        rows, key = [g.op("Unsqueeze", unigram, g.ints(2))], "input_ids"
        for n in range(2, order + 1):
            earlier = g.op("Slice", padded, g.ints(order - n), g.ints(-(n - 1)), g.ints(1))  # id_{t-n+1}
            key = g.op("Add", g.op("Mul", earlier, g.ints(v1 ** (n - 1))), key)
            row = g.op("Add", g.op("Mod", key, g.ints(buckets)), g.ints(v1 + (n - 2) * buckets))
            rows.append(g.op("Unsqueeze", row, g.ints(2)))
        return g.op("Gather", table, g.op("Concat", *rows, axis=2))

    def _negation_scope(self, g: GraphBuilder) -> str:
        """[B, T] 1.0 where a negator precedes within negation_window tokens with no breaker between (as
        training/ngrams.negation_scope)."""
        cfg = self.cfg

        def flags(name: str, wanted) -> str:
            table = np.zeros(cfg.vocab_size + 1, np.float32)
            table[list(wanted)] = 1.0
            return g.op("Gather", g.const(name, table), "input_ids")

        def shifted(x: str, j: int) -> str:  # x[:, t - j], zeros before the text
            return g.op("Slice", g.op("Pad", x, g.ints(0, j, 0, 0)), g.ints(0), g.ints(-j), g.ints(1))

        neg, brk = flags("negators", cfg.negation_ids), flags("scope_breakers", cfg.scope_break_ids)
        one = g.const("scalar_1f", np.array(1.0, np.float32))
        scope, clear = None, None
        for j in range(1, cfg.negation_window + 1):
            hit = shifted(neg, j) if clear is None else g.op("Mul", shifted(neg, j), clear)
            scope = hit if scope is None else g.op("Max", scope, hit)
            gap = g.op("Sub", one, shifted(brk, j))
            clear = gap if clear is None else g.op("Mul", clear, gap)
        return g.op("Greater", scope, g.const("scalar_half", np.array(0.5, np.float32)))

    # -- diagnostics ------------------------------------------------------------------------------------------
    def _diagnostic_outputs(self, g, x, mask, mask_b, steps, rng, ngram, ngram_w, layer_outputs) -> list:
        cfg, outs = self.cfg, []
        if supports_exact_diagnostics(cfg):
            prefix = self._running_features(g, x, mask_b, steps, rng)  # [T, B, F]
            running = g.op("Squeeze", self._logodds(g, prefix), g.ints(2))
            if ngram is not None:
                running = g.op("Add", running, g.op("CumSum", ngram, g.ints(0)))
            running = g.op("Mul", running, g.op("Cast", mask_b, to=TensorProto.FLOAT))
            g.op("Transpose", running, perm=[1, 0], name="running_logodds")
            g.op(
                "Transpose",
                g.op("Mul", g.op("Sigmoid", running), g.op("Cast", mask_b, to=TensorProto.FLOAT)),
                perm=[1, 0],
                name="running_positive",
            )
            contribution, baseline = self._contributions(g, x, mask, mask_b, rng, ngram_w)
            g.op("Transpose", contribution, perm=[1, 0], name="contribution")
            g.op("Identity", baseline, name="contribution_baseline")
            outs += [
                tensor_info(n, TensorProto.FLOAT, ["batch", "tokens"])
                for n in ("running_logodds", "running_positive", "contribution")
            ]
            outs.append(tensor_info("contribution_baseline", TensorProto.FLOAT, ["batch"]))
        H, D, G = cfg.hidden_size, cfg.directions, len(GATE_NAMES[cfg.cell])
        for hidden, gates in layer_outputs:
            outs.append(tensor_info(hidden, TensorProto.FLOAT, ["batch", "tokens", D, H]))
            if gates:
                outs.append(tensor_info(gates, TensorProto.FLOAT, ["batch", "tokens", D, G, H]))
        return outs

    def _running_features(self, g: GraphBuilder, x: str, mask_b: str, steps: str, rng: str) -> str:
        """Features [T, B, F] pooled over each prefix 0..t: exactly what pooling gives the text cut after t."""
        pooling = self.cfg.pooling
        if pooling == "last":
            return x
        parts = []
        if pooling in ("mean", "meanmax"):
            count = g.op("Cast", g.op("Add", rng, g.ints(1)), to=TensorProto.FLOAT)
            parts.append(g.op("Div", g.op("CumSum", x, g.ints(0)), g.op("Unsqueeze", count, g.ints(1, 2))))
        if pooling in ("max", "meanmax"):
            neg = g.const("neg_inf", np.array(-np.inf, np.float32))
            m = g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), x, neg)
            # Prefix maximum by doubling (Hillis-Steele): log2(max_tokens) shifted maxima, no recurrence. The shifted
            # copy is min(shift, T) rows of -inf then m's first T - min(shift, T) rows, so no step allocates more
            # than T rows (a Pad by `shift` allocated T + shift rows: 16,384 extra at the last step, a quarter of
            # the diagnostics graph's time on a 260-token review). Once shift >= T a step is a cheap no-op.
            rest = g.op("Slice", g.op("Shape", m), g.ints(1), g.ints(3))  # [B, H]
            shift = 1
            while shift < max(2, self.max_tokens):
                k = g.op("Min", steps, g.ints(shift))  # [1]
                head = g.op("Expand", neg, g.op("Concat", k, rest, axis=0))
                tail = g.op("Slice", m, g.ints(0), g.op("Sub", steps, k), g.ints(0))
                m = g.op("Max", m, g.op("Concat", head, tail, axis=0))
                shift *= 2
            # Positions past the length are -inf; zero them so MatMul stays finite (they are masked later anyway).
            m = g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), m, g.const("scalar_0f", np.array(0, np.float32)))
            parts.append(m)
        return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=2)

    def _contributions(self, g: GraphBuilder, x: str, mask: str, mask_b: str, rng: str, ngram_w: str | None):
        """Per-token log-odds contributions [T, B] and the baseline [B] (module docstring)."""
        cfg, H = self.cfg, self.cfg.hidden_size
        ref = empty_state(self.model)
        # dh_t = h_t - h_{t-1}, h_{-1} = the reference state
        shifted = g.op("Slice", g.op("Pad", x, g.ints(1, 0, 0, 0, 0, 0)), g.ints(0), g.ints(-1), g.ints(0))
        first = g.op("Cast", g.op("Equal", rng, g.ints(0)), to=TensorProto.FLOAT)  # [T]
        prev = g.op("Add", shifted, g.op("Mul", g.op("Unsqueeze", first, g.ints(1, 2)), g.const("ref_state", ref)))
        dh = g.op("Mul", g.op("Sub", x, prev), mask)  # [T, B, H]
        w = self.w_lo
        pooling = cfg.pooling
        terms = []
        ref_features = []
        if pooling == "last":
            # The final state telescopes: h_{L-1} = ref + sum_t dh_t.
            terms.append(g.op("MatMul", dh, g.const("w_last", w[:, None])))
            ref_features.append(ref)
        if pooling in ("mean", "meanmax"):
            lengths_f = g.op("Cast", "lengths", to=TensorProto.FLOAT)  # [B]
            remaining = g.op(
                "Div",
                g.op(
                    "Sub",
                    g.op("Unsqueeze", lengths_f, g.ints(0)),
                    g.op("Unsqueeze", g.op("Cast", rng, to=TensorProto.FLOAT), g.ints(1)),
                ),
                g.op("Unsqueeze", lengths_f, g.ints(0)),
            )  # [T, B]: (L - t) / L
            mean_w = g.const("w_mean", w[:H, None])
            terms.append(g.op("Mul", g.op("MatMul", dh, mean_w), g.op("Unsqueeze", remaining, g.ints(2))))
            ref_features.append(ref)
        if pooling in ("max", "meanmax"):
            neg = g.const("neg_inf", np.array(-np.inf, np.float32))
            argmax = g.op("ArgMax", g.op("Where", g.op("Unsqueeze", mask_b, g.ints(2)), x, neg), axis=0, keepdims=1)
            upto = g.op(
                "Cast", g.op("LessOrEqual", g.op("Unsqueeze", rng, g.ints(1, 2)), argmax), to=TensorProto.FLOAT
            )  # [T, B, H]: t <= argmax of the unit
            max_w = g.const("w_max", w[-H:])
            terms.append(g.op("ReduceSum", g.op("Mul", g.op("Mul", dh, upto), max_w), g.ints(2), keepdims=1))
            ref_features.append(ref)
        rnn = terms[0]
        for t in terms[1:]:
            rnn = g.op("Add", rnn, t)
        contribution = g.op("Squeeze", rnn, g.ints(2))  # [T, B]
        if ngram_w is not None:
            contribution = g.op("Add", contribution, self._ngram_shares(g, ngram_w, mask_b, rng))
        baseline_value = float(np.dot(w, np.concatenate(ref_features)) + self.b_lo)
        batch = g.op("Gather", g.op("Shape", "lengths"), g.ints(0), axis=0)
        baseline = g.op("Expand", g.const("baseline_logodds", np.array([baseline_value], np.float32)), batch)
        return contribution, baseline

    def _ngram_shares(self, g: GraphBuilder, ngram_w: str, mask_b: str, rng: str) -> str:
        """[T, B]: each n-gram's weight split equally between its real tokens (the begin-of-text id is not one)."""
        order = self.cfg.ngram_order
        weights = g.op("Transpose", ngram_w, perm=[1, 0, 2])  # [T, B, order]
        # [T, 1]: t + 1, from the positions the graph already has
        pos = g.op("Cast", g.op("Add", g.op("Unsqueeze", rng, g.ints(1)), g.ints(1)), to=TensorProto.FLOAT)
        total = None
        for k in range(order):  # order k+1 n-gram ending at s is shared by tokens s-k..s
            n = k + 1
            w_n = g.op("Squeeze", g.op("Slice", weights, g.ints(k), g.ints(k + 1), g.ints(2)), g.ints(2))  # [T, B]
            w_n = g.op("Mul", w_n, g.op("Cast", mask_b, to=TensorProto.FLOAT))
            share = g.op("Div", w_n, g.op("Min", pos, g.const(f"order_{n}f", np.array(float(n), np.float32))))
            for j in range(n):  # token t receives the share of the n-gram ending at t + j
                moved = (
                    share
                    if j == 0
                    else g.op("Slice", g.op("Pad", share, g.ints(0, 0, j, 0)), g.ints(j), g.ints(2**62), g.ints(0))
                )
                total = moved if total is None else g.op("Add", total, moved)
        return total

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
            ax = g.op(
                "Add",
                g.op("MatMul", x_in, g.const(f"{p}.w_ihT", _np(module.weight_ih_l0).T.copy())),
                g.const(f"{p}.b_ih", _np(module.bias_ih_l0)),
            )
            ah = g.op(
                "Add",
                g.op("MatMul", prev, g.const(f"{p}.w_hhT", _np(module.weight_hh_l0).T.copy())),
                g.const(f"{p}.b_hh", _np(module.bias_hh_l0)),
            )
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
