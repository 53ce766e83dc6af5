"""Diagnostics through the API, checked against torch on the same weights: gate means and hidden norms against the
from-scratch reference cells (training/cells.py), the running score against the model run on prefixes, attribution
against masked reruns; plus the report's shape, offsets, the hidden-vector cap, and that plain scoring never runs
the diagnostics graph."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from service.app import create_app

torch = pytest.importorskip("torch")
from training.cells import GATE_NAMES, reference_layer  # noqa: E402

CASES = [
    ("lstm", False, "meanmax", 1),
    ("lstm", True, "meanmax", 1),
    ("gru", False, "meanmax", 1),
    ("gru", True, "last", 1),
    ("lstm", True, "meanmax", 2),
    ("rnn", True, "max", 1),
    ("lstm", False, "last", 1),
]
TEXT = "The film was great<br />and the acting loved, the plot dull... It was a superb movie!"
TOL = 1e-4


@pytest.fixture(scope="module")
def served(export_random, make_settings, tmp_path_factory):
    """A client over one untrained export per case, and those exports (torch model included) by name."""
    root = tmp_path_factory.mktemp("diagnostics_models")
    exports = {}
    for case in CASES:
        export = export_random(*case)
        shutil.copytree(export.artifact, root / export.artifact.name)
        exports[export.artifact.name] = export
    with TestClient(create_app(make_settings(model_root=root, default_model=None, max_hidden_values=10_000))) as c:
        yield c, exports


def diagnose(client, name: str, text: str = TEXT, **flags) -> dict:
    response = client.post("/v1/sentiment", json={"text": text, "model": name, "diagnostics": True, **flags})
    assert response.status_code == 200, response.text
    return response.json()


def torch_probs(export, ids: list[int]) -> float:
    with torch.no_grad():
        logits = export.model(torch.tensor([ids]), torch.tensor([len(ids)]))
        return torch.softmax(logits / export.temperature, dim=-1)[0, 1].item()


def reference_states(export, ids: list[int]):
    """Per layer: per-direction hidden states [T, H] and gates [T, G, H] from the reference cells."""
    model, layers = export.model, []
    with torch.no_grad():
        x = model.embedding(torch.tensor(ids))
        for layer in model.layers:
            hs, gates = reference_layer(layer.directions, model.cfg.cell, x)
            layers.append((hs, gates))
            x = torch.cat(hs, dim=-1)
    return layers


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_gates_and_hidden_states_match_the_reference_cells(served, case):
    client, exports = served
    name = "{}-{}-{}-{}".format(case[0], "bi" if case[1] else "uni", case[2], case[3])
    export = exports[name]
    body = diagnose(client, name, include_hidden=True)
    report = body["diagnostics"]
    ids = [t["id"] for t in report["tokens"]]
    cell, directions = export.model.cfg.cell, 2 if case[1] else 1
    assert len(report["layers"]) == case[3] * directions
    assert body["score"] == pytest.approx(torch_probs(export, ids), abs=TOL)
    hidden = {(h["layer"], h["direction"]): h for h in report["hidden"]["layers"]}
    for li, (hs, gates) in enumerate(reference_states(export, ids)):
        for d in range(directions):
            entry = report["layers"][li * directions + d]
            assert (entry["layer"], entry["direction"]) == (li, ["forward", "backward"][d])
            np.testing.assert_allclose(entry["hidden_norm"], hs[d].norm(dim=1).numpy(), atol=TOL)
            for gi, gate in enumerate(GATE_NAMES[cell]):
                if gate in report["gates"]:
                    np.testing.assert_allclose(entry["gate_mean"][gate], gates[d][:, gi].mean(dim=1).numpy(), atol=TOL)
            raw = hidden[(li, entry["direction"])]
            assert not report["hidden"]["capped"] and raw["units"] == list(range(raw["size"]))
            np.testing.assert_allclose(raw["values"], hs[d].numpy(), atol=TOL)
    expected_gates = {"lstm": ["input", "forget", "output"], "gru": ["reset", "update"], "rnn": []}[cell]
    assert report["gates"] == expected_gates


def _prefix_scores(export, ids: list[int]) -> list[float]:
    """The documented running score: the head applied to the states pooled over each prefix 0..t (states computed on
    the whole review, so for a bidirectional model the backward half has read it all)."""
    model, cfg = export.model, export.model.cfg
    with torch.no_grad():
        states = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))[-1][0]  # [T, D*H]
        scores = []
        for t in range(len(ids)):
            if cfg.pooling == "last":
                feat = (
                    states[t] if cfg.directions == 1 else torch.cat([states[t, : cfg.hidden_size], states[0, cfg.hidden_size :]])
                )
            else:
                prefix = states[: t + 1]
                parts = {"mean": [prefix.mean(0)], "max": [prefix.amax(0)], "meanmax": [prefix.mean(0), prefix.amax(0)]}[
                    cfg.pooling
                ]
                feat = torch.cat(parts)
            scores.append(torch.softmax(model.head(feat) / export.temperature, -1)[1].item())
    return scores


@pytest.mark.parametrize("name", ["lstm-uni-meanmax-1", "gru-uni-meanmax-1", "lstm-uni-last-1"])
def test_running_score_follows_its_definition_and_ends_at_the_final_score(served, name):
    client, exports = served
    body = diagnose(client, name)
    tokens = body["diagnostics"]["tokens"]
    running = [t["running_score"] for t in tokens]
    assert running[-1] == pytest.approx(body["score"], abs=1e-5)
    assert body["diagnostics"]["summary"]["final_score"] == pytest.approx(body["score"], abs=1e-5)
    assert body["diagnostics"]["summary"]["running_score_method"] == "exact"
    ids = [t["id"] for t in tokens]
    np.testing.assert_allclose(running, _prefix_scores(exports[name], ids), atol=TOL)
    deltas = np.diff([0.5] + running)
    np.testing.assert_allclose([t["score_delta"] for t in tokens], deltas, atol=2e-6)
    # exactly the score of the review cut after each token
    for t in (0, len(ids) // 2):
        assert running[t] == pytest.approx(torch_probs(exports[name], ids[: t + 1]), abs=TOL)
    np.testing.assert_allclose([t["running_logodds"] for t in tokens], np.log(running) - np.log1p(-np.array(running)), atol=1e-3)


@pytest.mark.parametrize("name", ["lstm-bi-meanmax-1", "gru-bi-last-1", "lstm-bi-meanmax-2"])
def test_bidirectional_models_draw_no_running_score_and_say_why(served, name):
    client, _ = served
    report = diagnose(client, name)["diagnostics"]
    assert all(t["running_score"] is None and t["score_delta"] is None for t in report["tokens"])
    summary = report["summary"]
    assert summary["running_score_method"] is None and "bidirectional" in summary["running_score_note"]
    assert summary["contribution_method"] == "occlusion"  # contributions still come, from occlusion


def test_offsets_slice_the_submitted_text(served):
    client, exports = served
    text = "GREAT film<br /><br />I didn&#39;t like   the Ｐｌｏｔ… ok!!"
    name = "lstm-uni-meanmax-1"
    report = diagnose(client, name, text=text)["diagnostics"]
    normalizer = Tokenizer.from_file(str(exports[name].artifact / "tokenizer.json")).normalizer
    starts = []
    for i, tok in enumerate(report["tokens"]):
        assert tok["index"] == i and tok["text"] == text[tok["start"] : tok["end"]] and tok["text"]
        assert tok["unknown"] == (tok["token"] == "[UNK]")
        if not tok["unknown"]:
            assert tok["token"] in normalizer.normalize_str(tok["text"])  # "didn&#39;t" -> "didn't", "…" -> "..."
        starts.append(tok["start"])
    assert starts == sorted(starts)
    assert [t["token"] for t in report["tokens"][:3]] == ["great", "film", "i"]
    assert report["tokens"][3]["text"] == "didn&#39;t"


def _logodds(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


@pytest.mark.parametrize("name", ["gru-uni-meanmax-1", "lstm-bi-meanmax-1"])
def test_attribution_is_the_logodds_drop_when_a_token_is_masked(served, name):
    client, exports = served
    body = diagnose(client, name, attribution=True)
    ids = [t["id"] for t in body["diagnostics"]["tokens"]]
    unk = 1
    full = _logodds(torch_probs(exports[name], ids))
    assert body["diagnostics"]["summary"]["final_logodds"] == pytest.approx(full, abs=1e-3)
    for i in (0, 3, len(ids) - 1):
        masked = ids[:i] + [unk] + ids[i + 1 :]
        expected = full - _logodds(torch_probs(exports[name], masked))
        assert body["diagnostics"]["tokens"][i]["attribution"] == pytest.approx(expected, abs=1e-3)
        if "-bi-" in name:  # without exact contributions, the contribution is the occlusion
            assert body["diagnostics"]["tokens"][i]["contribution"] == body["diagnostics"]["tokens"][i]["attribution"]


def test_report_shape_and_summary(served):
    client, _ = served
    body = diagnose(client, "lstm-bi-meanmax-1")
    report = body["diagnostics"]
    assert set(report) == {"cell", "gates", "tokens", "layers", "summary"}  # no hidden, no attribution unasked
    n = body["num_tokens"]
    assert len(report["tokens"]) == n
    assert set(report["tokens"][0]) == {
        "index",
        "text",
        "start",
        "end",
        "id",
        "token",
        "unknown",
        "running_score",
        "running_logodds",
        "score_delta",
        "contribution",
    }
    for entry in report["layers"]:
        assert len(entry["hidden_norm"]) == len(entry["delta_norm"]) == n
        for gate in report["gates"]:
            assert len(entry["gate_mean"][gate]) == len(entry["gate_saturation"][gate]) == n
            assert all(0 <= v <= 1 for v in entry["gate_saturation"][gate])
    summary = report["summary"]
    assert {
        "final_score",
        "top_positive",
        "top_negative",
        "unknown_share",
        "gate_mean",
        "gate_saturation",
        "mean_forget_gate",
    } <= set(summary)
    assert all(t["contribution"] > 0 for t in summary["top_positive"])
    assert all(t["contribution"] < 0 for t in summary["top_negative"])
    # ranked by contribution: the first is the largest of all tokens
    contributions = [t["contribution"] for t in report["tokens"]]
    if summary["top_positive"]:
        assert summary["top_positive"][0]["contribution"] == max(contributions)
    unknown = sum(t["unknown"] for t in report["tokens"]) / n
    assert summary["unknown_share"] == pytest.approx(unknown, abs=1e-6)


def test_hidden_vectors_are_capped(served, make_settings):
    client, _ = served
    text = " ".join(["great film"] * 12)
    with TestClient(create_app(make_settings(max_hidden_values=60))) as small:
        report = small.post("/v1/sentiment", json={"text": text, "include_hidden": True}).json()["diagnostics"]
    hidden = report["hidden"]
    assert hidden["capped"] is True and hidden["max_values"] == 60
    assert sum(len(layer["units"]) * len(report["tokens"]) for layer in hidden["layers"]) <= max(
        60, len(hidden["layers"]) * len(report["tokens"])
    )
    for layer in hidden["layers"]:
        assert np.asarray(layer["values"]).shape == (len(report["tokens"]), len(layer["units"]))


def test_diagnostics_agree_with_plain_scoring_which_never_runs_the_diagnostics_graph(served):
    client, _ = served
    name = "lstm-bi-meanmax-2"
    rt = client.app.state.service.registry.get(name)
    real, calls = rt.diagnostics_session, []

    class Counting:
        def __getattr__(self, attr):
            return getattr(real, attr)

        def run(self, *args, **kwargs):
            calls.append(1)
            return real.run(*args, **kwargs)

    rt.diagnostics_session = Counting()
    try:
        plain = client.post("/v1/sentiment", json={"text": TEXT, "model": name}).json()
        batch = client.post("/v1/sentiment/batch", json={"items": [{"text": TEXT}], "model": name}).json()
        assert calls == []
        diag = diagnose(client, name)
        assert calls == [1]
    finally:
        rt.diagnostics_session = real
    assert "diagnostics" not in plain and "diagnostics" not in batch["results"][0]
    assert diag["score"] == pytest.approx(plain["score"], abs=1e-5)
    assert diag["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-5)


def test_batch_diagnostics_and_truncated_reviews(served):
    client, _ = served
    long = " ".join(f"word{i} great" for i in range(40))  # 80 tokens, the model keeps 24 (head_tail, head 16)
    items = [{"id": "long", "text": long}, {"id": "short", "text": "dull plot"}]
    results = client.post("/v1/sentiment/batch", json={"items": items, "model": "gru-uni-meanmax-1", "diagnostics": True}).json()[
        "results"
    ]
    assert [r["id"] for r in results] == ["long", "short"]
    first = results[0]
    assert first["truncated"] is True and len(first["diagnostics"]["tokens"]) == first["num_tokens"] == 24
    tokens = first["diagnostics"]["tokens"]
    assert [t["text"] for t in tokens[:2]] == ["word0", "great"]  # the head...
    assert tokens[-1]["end"] == len(long) and tokens[16]["start"] > tokens[15]["end"] + 100  # ...and the tail
    assert tokens[-1]["running_score"] == pytest.approx(first["score"], abs=1e-5)
    assert [t["text"] for t in results[1]["diagnostics"]["tokens"]] == ["dull", "plot"]
