"""ONNX export: torch/onnxruntime parity, diagnostics (hidden states, gates, running score), manifest and budgets."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.artifacts import sha256_of
from service.tokenization import TextTokenizer
from training.cells import GATE_NAMES, reference_layer
from training.config import ModelConfig, TrainConfig
from training.export import export_model, load_run, train_command
from training.models import RecurrentClassifier
from training.tokenizer import build_tokenizer
from training.train import parse_config

CELLS = ["lstm", "gru", "rnn"]
POOLINGS = ["last", "mean", "max", "meanmax"]
ALL_CONFIGS = [(c, bi, p, 1) for c in CELLS for bi in (False, True) for p in POOLINGS] + [
    (c, bi, p, 2) for c in CELLS for bi in (False, True) for p in ("last", "meanmax")
]


def _ids(config):
    cell, bi, pooling, layers = config
    return f"{cell}-{'bi' if bi else 'uni'}-{pooling}-{layers}l"


def _batch(vocab: int, lengths: list[int], steps: int, seed: int):
    """Random ids in [1, vocab) right-padded with [PAD]=0 past each length."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), steps), generator=gen)
    lens = torch.tensor(lengths)
    ids[torch.arange(steps)[None, :] >= lens[:, None]] = 0
    return ids, lens


def _feeds(ids, lens):
    return {"input_ids": ids.numpy(), "lengths": lens.numpy()}


def _torch_scores(model, ids, lens, temperature):
    with torch.no_grad():
        logits = model(ids, lens)
    return logits.numpy(), (logits / temperature).softmax(1).numpy()


def _maxdiff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def diag(export_random, ort_session):
    """(export, scoring session, diagnostics session, {output: array}) of one config on one random batch."""
    cache = {}

    def run(config, lengths=None, steps=None, seed=0):
        exp = export_random(*config)
        key = (config, tuple(lengths or ()), steps, seed)
        if key not in cache:
            if exp.artifact not in cache:
                cache[exp.artifact] = (ort_session(exp.artifact / "model.onnx"), ort_session(exp.artifact / "diagnostics.onnx"))
            sessions = cache[exp.artifact]
            steps_ = steps or exp.max_tokens
            ids, lens = _batch(exp.model.cfg.vocab_size, lengths or [steps_, 1, 7, steps_ - 2, 3], steps_, seed)
            names = [o.name for o in sessions[1].get_outputs()]
            cache[key] = (
                exp,
                ids,
                lens,
                sessions[0].run(None, _feeds(ids, lens)),
                dict(zip(names, sessions[1].run(None, _feeds(ids, lens)))),
            )
        return cache[key]

    return run


# --- parity -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=_ids)
def test_onnx_matches_torch_on_padded_batches(diag, config):
    for lengths, steps in ((None, None), ([5], 5), ([9, 2], 13)):  # dynamic batch and token dims
        exp, ids, lens, (probs, logits), d = diag(config, lengths, steps)
        ref_logits, ref_probs = _torch_scores(exp.model, ids, lens, exp.temperature)
        assert _maxdiff(logits, ref_logits) <= 1e-5
        assert _maxdiff(probs, ref_probs) <= 1e-5
        assert np.allclose(probs.sum(1), 1.0, atol=1e-6)
        # the diagnostics graph scores exactly like the scoring graph
        assert _maxdiff(d["probabilities"], probs) <= 1e-6
        assert _maxdiff(d["logits"], logits) <= 1e-6


def test_temperature_is_applied(diag):
    exp, ids, lens, (probs, logits), _ = diag(("lstm", True, "meanmax", 1))
    assert exp.temperature != 1.0
    with torch.no_grad():
        uncalibrated = exp.model(ids, lens).softmax(1).numpy()
    assert _maxdiff(probs, uncalibrated) > 1e-3
    assert _maxdiff(probs, torch.from_numpy(logits / exp.temperature).softmax(1).numpy()) <= 1e-6


# --- diagnostics ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=_ids)
def test_diagnostics_hidden_states_match_encode(diag, config):
    exp, ids, lens, _, d = diag(config)
    cfg = exp.model.cfg
    with torch.no_grad():
        outputs = exp.model.encode(ids, lens)
    assert len([k for k in d if k.startswith("hidden_")]) == cfg.num_layers
    for li, out in enumerate(outputs):
        hidden = d[f"hidden_{li}"]
        assert hidden.shape == (len(lens), ids.shape[1], cfg.directions, cfg.hidden_size)
        assert _maxdiff(hidden.reshape(out.shape), out.numpy()) <= 1e-5
        for b, n in enumerate(lens.tolist()):
            assert (hidden[b, n:] == 0).all()


@pytest.mark.parametrize("config", [c for c in ALL_CONFIGS if c[0] != "rnn" and c[2] == "meanmax"], ids=_ids)
def test_diagnostics_gates_match_reference_cells(diag, config):
    exp, ids, lens, _, d = diag(config)
    cfg, model = exp.model.cfg, exp.model
    with torch.no_grad():
        layer_inputs = [model.embedding(ids)] + model.encode(ids, lens)[:-1]
        for li, layer in enumerate(model.layers):
            gates = d[f"gates_{li}"]
            assert gates.shape == (len(lens), ids.shape[1], cfg.directions, len(GATE_NAMES[cfg.cell]), cfg.hidden_size)
            for b, n in enumerate(lens.tolist()):
                hs, ref_gates = reference_layer(layer.directions, cfg.cell, layer_inputs[li][b, :n])
                for direction in range(cfg.directions):
                    assert _maxdiff(gates[b, :n, direction], ref_gates[direction].numpy()) <= 1e-4
                    assert _maxdiff(d[f"hidden_{li}"][b, :n, direction], hs[direction].numpy()) <= 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_diagnostics_have_no_gates(diag, bidirectional):
    *_, d = diag(("rnn", bidirectional, "meanmax", 2))
    assert {"hidden_0", "hidden_1"} <= d.keys()
    assert not [k for k in d if k.startswith("gates_")]


@pytest.mark.parametrize("config", [c for c in ALL_CONFIGS if c[1]], ids=_ids)
def test_bidirectional_graphs_claim_no_prefix_reading(diag, config):
    """The backward half has read the whole text before position 0: no running score, no exact contributions."""
    *_, d = diag(config)
    assert not {"running_positive", "running_logodds", "contribution", "contribution_baseline"} & d.keys()


@pytest.mark.parametrize("config", [c for c in ALL_CONFIGS if not c[1]], ids=_ids)
def test_running_positive_ends_at_the_final_probability(diag, config):
    exp, ids, lens, (probs, _), d = diag(config)
    running = d["running_positive"]
    assert running.shape == ids.shape
    for b, n in enumerate(lens.tolist()):
        assert abs(running[b, n - 1] - probs[b, 1]) <= 1e-5
        assert (running[b, n:] == 0).all()
        assert ((running[b, :n] >= 0) & (running[b, :n] <= 1)).all()


@pytest.mark.parametrize("config", [c for c in ALL_CONFIGS if not c[1]], ids=_ids)
def test_unidirectional_running_positive_is_the_prefix_score(diag, export_random, config):
    """running_positive[t] is what the model says about the review cut after token t."""
    steps = export_random(*config).max_tokens  # the longest input the service sends
    exp, ids, lens, _, d = diag(config, lengths=[steps, 9, 1, steps - 7], steps=steps)
    with torch.no_grad():
        for b, n in enumerate(lens.tolist()):
            prefixes = ids[b, :n].repeat(n, 1)
            prefix_lens = torch.arange(1, n + 1)
            prefixes[torch.arange(n)[None, :] >= prefix_lens[:, None]] = 0
            expected = (exp.model(prefixes, prefix_lens) / exp.temperature).softmax(1)[:, 1].numpy()
            assert _maxdiff(d["running_positive"][b, :n], expected) <= 1e-5


# --- graphs, files and manifest -------------------------------------------------------------------------------


def test_opset_and_dynamic_inputs(tiny_artifact, random_artifacts):
    for art in [tiny_artifact] + [e.artifact for e in random_artifacts.values()]:
        for name in ("model.onnx", "diagnostics.onnx"):
            model = onnx.load(str(art / name), load_external_data=False)
            default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
            assert default and default[0] >= 17
            inputs = {i.name: i.type.tensor_type for i in model.graph.input}
            assert set(inputs) == {"input_ids", "lengths"}
            assert inputs["input_ids"].elem_type == inputs["lengths"].elem_type == onnx.TensorProto.INT64
            dims = [d for t in inputs.values() for d in t.shape.dim]
            assert len(dims) == 3 and all(d.dim_param and not d.dim_value for d in dims)
            assert inputs["input_ids"].shape.dim[0].dim_param == inputs["lengths"].shape.dim[0].dim_param
            # weights live once, in weights.bin, shared by both graphs
            external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
            assert external
            assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"weights.bin"}


def test_tiny_artifact_has_every_file(tiny_artifact):
    for name in ("model.onnx", "diagnostics.onnx", "weights.bin", "tokenizer.json", "manifest.json"):
        assert (tiny_artifact / name).is_file(), name


def test_manifest_contents(tiny_artifact, tiny_run_dir):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    _, saved = load_run(tiny_run_dir)
    cfg: TrainConfig = saved["train_config"]
    assert manifest["schema_version"] >= 1
    assert manifest["name"] == cfg.name == "tiny-lstm"
    assert manifest["version"] == "0.0.1"
    assert manifest["labels"] == ["negative", "positive"]
    model_cfg = {k: v for k, v in manifest["model"].items() if k not in ("directions", "gates")}
    assert ModelConfig(**model_cfg) == saved["model_config"]
    assert manifest["model"]["directions"] == saved["model_config"].directions
    assert manifest["model"]["gates"] == list(GATE_NAMES[saved["model_config"].cell])
    assert manifest["tokenizer"]["vocab_size"] == saved["model_config"].vocab_size
    assert manifest["max_tokens"] == cfg.max_tokens
    assert manifest["truncation"]["strategy"] == cfg.truncation
    assert manifest["truncation"]["head_tokens"] == cfg.head_tokens
    assert manifest["temperature"] == saved["metrics"]["temperature"]
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    for key in ("val_accuracy", "ece_before", "ece_after", "temperature", "best_epoch"):
        assert manifest["metrics"][key] == metrics[key]
    assert len(manifest["history"]) == len(metrics["history"])
    # the recorded command reproduces the run's configuration
    command = shlex.split(manifest["training"]["command"])
    assert command[0] == "sentiment-train"
    rebuilt, resume = parse_config(command[1:])
    rebuilt.model.vocab_size = cfg.model.vocab_size
    assert rebuilt == cfg and not resume
    assert manifest["training"]["config"]["seed"] == cfg.seed
    commit = manifest["training"]["source_commit"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    assert commit == (head or "unknown")
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", commit)


def test_training_command_round_trips_through_the_cli_parser():
    cfg = TrainConfig(
        data="/data/my reviews/imdb's.jsonl",
        name="lstm with spaces",
        lr=0.003,
        epochs=3,
        time_budget_min=1e-3,
        truncation="tail",
        model=ModelConfig(cell="gru", bidirectional=False, pooling="last", hidden_size=64),
    )
    command = train_command(cfg)
    rebuilt, _ = parse_config(shlex.split(command)[1:])
    assert rebuilt == cfg
    assert "--no-bidirectional" in command and "--vocab-size" not in command


def test_manifest_hashes_match_the_files(tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    on_disk = {p.name for p in tiny_artifact.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk  # every file but the manifest itself
    assert {"model.onnx", "diagnostics.onnx", "weights.bin", "tokenizer.json"} <= on_disk
    for name, entry in manifest["files"].items():
        path = tiny_artifact / name
        assert entry["sha256"] == sha256_of(path)
        assert entry["bytes"] == path.stat().st_size


def test_artifact_within_size_budget(tiny_artifact):
    assert sum(p.stat().st_size for p in tiny_artifact.iterdir()) <= 30 * 2**20


def test_full_size_model_fits_the_budget_with_shared_weights(tmp_path, placeholder_metrics):
    """The shipped configuration (30k vocab, 100-d embeddings, BiLSTM 128): the two graphs share one weights file."""
    cfg = ModelConfig()
    tokenizer = build_tokenizer([" ".join(f"w{k}" for k in range(cfg.vocab_size))], cfg.vocab_size, 1)
    assert tokenizer.get_vocab_size() == cfg.vocab_size
    model = RecurrentClassifier(cfg)
    manifest = export_model(
        model, tokenizer.to_str(), tmp_path, name="full", version="0", train_cfg=TrainConfig(), metrics=placeholder_metrics()
    )
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total <= 30 * 2**20
    # The embedding table is stored once for both graphs; the recurrent and head weights at most twice (ONNX gate
    # order for the scoring op, torch order for the diagnostics' gate recomputation), plus alignment padding.
    embedding_bytes = model.embedding.weight.numel() * 4
    other_bytes = sum(p.numel() * 4 for p in model.parameters()) - embedding_bytes
    assert embedding_bytes <= manifest["files"]["weights.bin"]["bytes"] <= embedding_bytes + 2 * other_bytes + 64 * 64
    assert (tmp_path / "model.onnx").stat().st_size < 64 * 1024


def test_export_cli_reports_a_missing_run(tmp_path, capsys):
    from training.export import main

    assert main(["--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "out")]) == 2
    assert "no-run" in capsys.readouterr().err


# --- the trained tiny model -------------------------------------------------------------------------------------

TEXTS = [
    "A wonderful film, I loved it.<br /><br />Great acting &amp; a brilliant ending!",
    "Awful. Boring plot and I hated the terrible ending.",
    "The movie",
    " ".join(["the plot was dull and the acting was stupid"] * 12) + " but the music was superb",  # truncated
]


def test_trained_model_scores_a_text_the_same_alone_and_in_a_padded_batch(tiny_artifact, tiny_run_dir, ort_session):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    tok = TextTokenizer.from_file(
        tiny_artifact / "tokenizer.json",
        max_tokens=manifest["max_tokens"],
        truncation=manifest["truncation"]["strategy"],
        head_tokens=manifest["truncation"]["head_tokens"],
    )
    encoded = tok.encode_batch(TEXTS)
    assert encoded[3].truncated and encoded[3].num_tokens == manifest["max_tokens"]
    lens = np.array([e.num_tokens for e in encoded])
    ids = np.zeros((len(TEXTS), int(lens.max())), dtype=np.int64)
    for b, e in enumerate(encoded):
        ids[b, : e.num_tokens] = e.ids
    model, _ = load_run(tiny_run_dir)
    ref_logits, ref_probs = _torch_scores(model, torch.from_numpy(ids), torch.from_numpy(lens), manifest["temperature"])
    for name in ("model.onnx", "diagnostics.onnx"):
        session = ort_session(tiny_artifact / name)
        batch = session.run(["probabilities"], {"input_ids": ids, "lengths": lens})[0]
        assert _maxdiff(batch, ref_probs) <= 1e-5
        for b, e in enumerate(encoded):
            alone = session.run(["probabilities"], {"input_ids": e.ids[None], "lengths": np.array([e.num_tokens])})[0]
            assert _maxdiff(alone[0], batch[b]) <= 1e-5


def test_trained_model_learned_the_fixture_sentiment(tiny_artifact, ort_session):
    """The fixture's reviews carry their sentiment in their words; two tiny epochs are enough to pick it up."""
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["metrics"]["val_accuracy"] > 0.6
    tok = TextTokenizer.from_file(tiny_artifact / "tokenizer.json", max_tokens=manifest["max_tokens"])
    session = ort_session(tiny_artifact / "model.onnx")

    def positive(text):
        enc = tok.encode(text)
        return session.run(["probabilities"], {"input_ids": enc.ids[None], "lengths": np.array([enc.num_tokens])})[0][0, 1]

    assert positive(TEXTS[0]) > 0.5 > positive(TEXTS[1])
