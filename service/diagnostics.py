"""Turns the diagnostics graph's raw outputs into the per-token report returned with `"diagnostics": true`.

Definitions (also in the README; derivations in training/graph.py):
- running_score[t]: P(positive) the model gives the text cut after token t, exactly (unidirectional encoders; the
  manifest's `diagnostics.running_score` is "exact"; int8 models say "approximate": their activation scales are
  computed per call, so a prefix scored alone can differ by ~0.005). A bidirectional encoder has no such reading
  (its backward half has read the whole text before position 0), so its running_score is null and
  `summary.running_score_note` says why.
- running_logodds[t]: the same in log-odds; score_delta[t] = running_score[t] - running_score[t-1] (0.5 before).
- contribution[t]: token t's signed share of the final decision in log-odds (positive pushes towards "positive").
  Exact models: baseline + sum of contributions = final log-odds (`summary.contribution_baseline`,
  `summary.final_logodds`); the method is `summary.contribution_method`. Other models: occlusion in log-odds (the
  drop in log-odds when the token is replaced by [UNK]), for texts up to `OCCLUSION_MAX_TOKENS` tokens.
- attribution[t] (asked for with "attribution": true): occlusion, in log-odds, for every model.
- delta_norm[t] = ||h_t - h_prev||, h_prev being the state before this token in that direction's reading order
  (t-1 forward, t+1 backward; zeros at the start).
- gate_mean: mean activation over units; gate_saturation: share of units < 0.1 or > 0.9.
Layers are reported column-wise: each list is aligned with `tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

REPORTED_GATES = ("input", "forget", "output", "reset", "update")
SATURATION_LOW, SATURATION_HIGH = 0.1, 0.9
TOP_TOKENS = 5
# Occlusion runs the model once per token over the whole text (O(T^2) token steps): beyond this many tokens it is
# not computed and the response says so.
OCCLUSION_MAX_TOKENS = 1_000


@dataclass(frozen=True)
class ModelFacts:
    """What the report needs to know about the model, and nothing more: how to name a token id, which id is [UNK],
    which label is positive, and what the manifest says about the cell, its gates and its diagnostics graph."""

    id_to_token: Callable[[int], str | None]
    unk_id: int
    positive: int  # index of "positive" among the labels
    cell: str | None = None
    gates: tuple[str, ...] = ()  # the cell's gates, in the order of the graph's gates_{layer} output
    contract: dict = field(default_factory=dict)  # the manifest's "diagnostics" block (see service/contract.py)

    @classmethod
    def from_manifest(cls, manifest: dict, id_to_token: Callable[[int], str | None], unk_id: int) -> ModelFacts:
        return cls(
            id_to_token,
            unk_id,
            list(manifest["labels"]).index("positive"),
            manifest["model"].get("cell"),
            tuple(manifest["model"].get("gates", [])),
            dict(manifest.get("diagnostics") or {}),
        )


def _r(values: np.ndarray, digits: int = 6) -> list:
    return np.round(values.astype(np.float64), digits).tolist()


def _layer_reports(outputs: dict, n: int, gate_names: list[str]) -> tuple[list[dict], dict[str, list[tuple[float, float]]]]:
    """The column-wise per-layer/direction report, and each reported gate's review-wide mean activation and
    saturation per layer/direction (for the summary). Gates are reduced for all of them at once (one numpy call
    per array, not one per gate: this runs on every diagnostics request)."""
    reports: list[dict] = []
    overall: dict[str, list[tuple[float, float]]] = {}
    picked = [(gi, name) for gi, name in enumerate(gate_names) if name in REPORTED_GATES]
    layer = 0
    while f"hidden_{layer}" in outputs:
        hidden = outputs[f"hidden_{layer}"][0, :n]  # [n, D, H]
        gates = outputs.get(f"gates_{layer}")
        for d in range(hidden.shape[1]):
            h = hidden[:, d]
            zeros = np.zeros_like(h[:1])
            prev = np.concatenate([zeros, h[:-1]]) if d == 0 else np.concatenate([h[1:], zeros])
            gate_mean: dict[str, list] = {}
            gate_saturation: dict[str, list] = {}
            entry = {
                "layer": layer,
                "direction": "forward" if d == 0 else "backward",
                "hidden_norm": _r(np.linalg.norm(h, axis=1)),
                "delta_norm": _r(np.linalg.norm(h - prev, axis=1)),
                "gate_mean": gate_mean,
                "gate_saturation": gate_saturation,
            }
            if gates is not None and picked:
                # All gates in one pass each over [n, G, H] (a view: no copy), then the reported ones picked.
                g = gates[0, :n, d]
                means = g.mean(axis=2)  # [n, G]
                saturated = np.count_nonzero((g < SATURATION_LOW) | (g > SATURATION_HIGH), axis=2) / g.shape[2]
                for gi, name in picked:
                    gate_mean[name] = _r(means[:, gi])
                    gate_saturation[name] = _r(saturated[:, gi])
                    overall.setdefault(name, []).append((float(means[:, gi].mean()), float(saturated[:, gi].mean())))
            reports.append(entry)
        layer += 1
    return reports, overall


def _hidden(outputs: dict, n: int, cap: int) -> dict:
    """Raw hidden vectors, at most `cap` numbers: when over, keep the units that vary most across the review."""
    layers, total = [], 0
    blocks = []
    layer = 0
    while f"hidden_{layer}" in outputs:
        hidden = outputs[f"hidden_{layer}"][0, :n]
        blocks += [(layer, d, hidden[:, d]) for d in range(hidden.shape[1])]
        layer += 1
    per_block = max(1, cap // max(1, n * len(blocks)))
    for layer, d, h in blocks:
        units = np.arange(h.shape[1])
        if h.shape[1] > per_block:
            units = np.sort(np.argsort(-h.std(axis=0), kind="stable")[:per_block])
        values = h[:, units]
        total += values.size
        layers.append(
            {
                "layer": layer,
                "direction": "forward" if d == 0 else "backward",
                "units": units.tolist(),
                "size": int(h.shape[1]),
                "values": _r(values, 4),
            }
        )
    return {"layers": layers, "capped": any(len(x["units"]) < x["size"] for x in layers), "max_values": cap}


def _top(tokens: list[dict], values: np.ndarray, positive: bool) -> list[dict]:
    order = np.argsort(-values if positive else values, kind="stable")[:TOP_TOKENS]
    return [
        {"index": int(i), "text": tokens[i]["text"], "contribution": tokens[i]["contribution"]}
        for i in order
        if (values[i] > 0 if positive else values[i] < 0)
    ]


def build(
    model: ModelFacts,
    text: str,
    enc,
    outputs: dict,
    include_hidden: bool,
    max_hidden_values: int,
    occlusion: np.ndarray | None,
    final_logodds: float,
    attribution: bool = False,
) -> dict:
    """The report (shape: `schemas.DiagnosticsReport`) for one text. `enc`: its `Encoded` tokens; `outputs`: the
    diagnostics graph's outputs by name; `occlusion`: log-odds with each token masked (None when not computed),
    reported as `attribution` when `attribution` is asked for."""
    n = enc.num_tokens
    exact = "running_logodds" in outputs
    unk = model.unk_id
    final = float(outputs["probabilities"][0, model.positive])
    ids = enc.ids.tolist()
    words = [model.id_to_token(tid) for tid in ids]
    tokens = [
        {"index": i, "text": text[start:end], "start": start, "end": end, "id": tid, "token": word, "unknown": tid == unk}
        for i, ((start, end), tid, word) in enumerate(zip(enc.offsets, ids, words))
    ]
    occ = None if occlusion is None else final_logodds - occlusion[:n].astype(np.float64)
    summary: dict = {"final_score": round(final, 6), "final_logodds": round(final_logodds, 6)}
    if exact:
        running = outputs["running_positive"][0, :n].astype(np.float64)
        contrib = outputs["contribution"][0, :n].astype(np.float64)
        columns = {
            "running_score": _r(running),
            "running_logodds": _r(outputs["running_logodds"][0, :n]),
            "score_delta": _r(running - np.concatenate([[0.5], running[:-1]])),
            "contribution": _r(contrib),
        }
        summary.update(
            running_score_method=model.contract.get("running_score", "exact"),  # "approximate" for int8 models
            contribution_method=model.contract.get("contribution", "state_change"),
            contribution_baseline=round(float(outputs["contribution_baseline"][0]), 6),
        )
    else:
        contrib = occ
        columns = {
            "running_score": [None] * n,
            "running_logodds": [None] * n,
            "score_delta": [None] * n,
            "contribution": [None] * n if occ is None else _r(occ),
        }
        summary.update(
            running_score_method=None,
            running_score_note=model.contract.get(
                "note", "bidirectional encoder: no prefix reading exists (the backward half reads the whole text first)"
            ),
            contribution_method=None if occ is None else "occlusion",
        )
        if occ is None:
            summary["contribution_note"] = (
                f"occlusion contributions cost one model run per token; this text has {n} "
                f"tokens, over the limit of {OCCLUSION_MAX_TOKENS}"
            )
    for name, values in columns.items():
        for row, value in zip(tokens, values):
            row[name] = value
    if attribution and occ is not None:
        for row, value in zip(tokens, _r(occ)):
            row["attribution"] = value
    gate_names = list(model.gates)
    layers, overall = _layer_reports(outputs, n, gate_names)
    summary.update(
        top_positive=[] if contrib is None else _top(tokens, contrib, True),
        top_negative=[] if contrib is None else _top(tokens, contrib, False),
        unknown_share=round(float(np.mean(enc.ids == unk)) if n else 0.0, 6),
        gate_mean={},
        gate_saturation={},
    )
    for name, per_block in overall.items():
        summary["gate_mean"][name] = round(float(np.mean([m for m, _ in per_block])), 6)
        summary["gate_saturation"][name] = round(float(np.mean([sat for _, sat in per_block])), 6)
    # The two gates that decide how much of the past survives: the LSTM forget gate, the GRU update gate.
    for name in ("forget", "update"):
        if name in summary["gate_mean"]:
            summary[f"mean_{name}_gate"] = summary["gate_mean"][name]
    report = {
        "cell": model.cell,
        "gates": [g for g in gate_names if g in REPORTED_GATES],
        "tokens": tokens,
        "layers": layers,
        "summary": summary,
    }
    if include_hidden:
        report["hidden"] = _hidden(outputs, n, max_hidden_values)
    return report
