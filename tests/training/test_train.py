"""The train loop end to end on the tiny fixture: outputs, resume, reproducibility, calibration and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training import train as train_mod
from training.calibration import expected_calibration_error, fit_temperature
from training.export import load_run
from training.train import main, parse_config, train


def _history(metrics: dict) -> list[dict]:
    """History rows without their wall-clock seconds (the only field allowed to differ between equal runs)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]


def test_tiny_run_writes_checkpoint_model_and_metrics(tiny_run_dir):
    for name in ("checkpoint.pt", "model.pt", "metrics.json", "prepared.pt"):
        assert (tiny_run_dir / name).is_file(), name
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert 0.0 <= metrics["ece_before"] <= 1.0 and 0.0 <= metrics["ece_after"] <= 1.0
    assert metrics["temperature"] > 0
    assert metrics["val_nll_after"] <= metrics["val_nll_before"] + 1e-4  # the fitted T is no worse than T = 1
    assert metrics["epochs_run"] == 2
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["best_epoch"] == max(metrics["history"], key=lambda r: r["val_accuracy"])["epoch"]
    assert metrics["val_accuracy"] == pytest.approx(max(r["val_accuracy"] for r in metrics["history"]))
    counts = metrics["counts"]
    assert counts["train"] + counts["val"] == 60 and counts["val"] > 0


def test_saved_model_reproduces_the_reported_validation_metrics(tiny_run_dir):
    """model.pt holds the best epoch's weights: rescoring the cached validation set gives the reported numbers."""
    model, saved = load_run(tiny_run_dir)
    prepared = torch.load(tiny_run_dir / "prepared.pt", weights_only=False)
    logits, y = train_mod.predict_logits(model, *prepared["val"])
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(saved["metrics"]["val_accuracy"])
    temperature = saved["metrics"]["temperature"]
    assert F.cross_entropy(logits / temperature, y).item() == pytest.approx(saved["metrics"]["val_nll_after"], 1e-5)
    checkpoint = torch.load(tiny_run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["state"]["epoch"] == 2
    assert checkpoint["train_config"].model.vocab_size == saved["model_config"].vocab_size


def test_batches_pad_with_zero_and_cover_every_example():
    ids = [torch.arange(1, n + 1).numpy() for n in (3, 1, 7, 2, 5)]
    labels = [0, 1, 1, 0, 1]
    seen = []
    for x, lengths, y in train_mod.batches(ids, labels, batch_size=2, seed=3):
        for row, n, label in zip(x, lengths.tolist(), y.tolist()):
            assert row[:n].tolist() == list(range(1, n + 1)) and (row[n:] == 0).all()
            seen.append((n, label))
    assert sorted(seen) == sorted((len(i), lab) for i, lab in zip(ids, labels))


def test_training_is_reproducible(tiny_run_dir, imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, _ = tiny_config_factory
    again = train(config(imdb_fixture_dir, tmp_path / "again"))
    first = json.loads((tiny_run_dir / "metrics.json").read_text())
    assert _history(again) == _history(first)
    assert again["temperature"] == first["temperature"]
    a, b = load_run(tiny_run_dir)[0].state_dict(), load_run(tmp_path / "again")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_extends_a_finished_run_to_the_requested_epochs(tiny_run_dir, imdb_fixture_dir, tiny_config_factory, tmp_path):
    """`--resume --epochs 2` after a 1-epoch run continues to epoch 2, exactly as an uninterrupted 2-epoch run."""
    _, argv = tiny_config_factory
    out = tmp_path / "resumed"
    assert main(argv(imdb_fixture_dir, out, epochs=1)) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1
    assert main(argv(imdb_fixture_dir, out, epochs=2) + ["--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert resumed["epochs_run"] == 2
    assert _history(resumed) == _history(json.loads((tiny_run_dir / "metrics.json").read_text()))


def test_resume_after_a_stop_continues_to_the_runs_own_target(
    tiny_run_dir, imdb_fixture_dir, tiny_config_factory, tmp_path, monkeypatch
):
    """A run stopped after epoch 1 of 2; `sentiment-train --out-dir ... --resume` (nothing else) finishes it."""
    _, argv = tiny_config_factory
    out = tmp_path / "stopped"
    real_evaluate, calls = train_mod.evaluate, []

    def evaluate_then_stop(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped in epoch 2, before its checkpoint
        return real_evaluate(*args)

    monkeypatch.setattr(train_mod, "evaluate", evaluate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(argv(imdb_fixture_dir, out))
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    assert not (out / "metrics.json").exists()
    cfg, resume = parse_config(["--out-dir", str(out), "--resume"])
    assert resume and cfg.epochs == 2  # the run's own target, not the CLI default
    assert main(["--out-dir", str(out), "--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert _history(resumed) == _history(json.loads((tiny_run_dir / "metrics.json").read_text()))


def test_time_budget_stops_after_the_epoch_that_crosses_it(imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, _ = tiny_config_factory
    metrics = train(config(imdb_fixture_dir, tmp_path / "budget", epochs=3, time_budget_min=1e-9))
    assert metrics["epochs_run"] == 1


def test_an_ngram_run_picks_epochs_by_the_whole_model_and_exports_exact_diagnostics(
    imdb_fixture_dir, tiny_config_factory, tmp_path
):
    """Unidirectional network + NBSVM branch: the mix is fitted, each epoch is judged with the branch, and the
    export's scores equal the torch model's."""
    import onnxruntime as ort

    from training.export import export_model, load_run

    config, _ = tiny_config_factory
    cfg = config(
        imdb_fixture_dir, tmp_path / "ngram", model={"bidirectional": False, "ngram_buckets": 101}, ngram_c=1.0, epochs=2
    )
    metrics = train(cfg)
    history = metrics["history"]
    assert all("val_accuracy_rnn" in row for row in history)
    assert metrics["val_accuracy"] == pytest.approx(max(row["val_accuracy"] for row in history), abs=1e-6)
    assert len(metrics["mix"]) == 3 and metrics["temperature"] == 1.0
    model, saved = load_run(tmp_path / "ngram")
    assert model.ngram.weight.abs().sum() > 0  # the fitted branch is saved
    out = export_model(
        model,
        saved["tokenizer_json"],
        tmp_path / "art",
        name="ng",
        version="0",
        train_cfg=saved["train_config"],
        metrics=metrics,
        temperature=1.0,
    )
    assert out["diagnostics"]["running_score"] == "exact"
    ids = torch.tensor([[5, 9, 2, 7, 3]])
    session = ort.InferenceSession(str(tmp_path / "art" / "model.onnx"))
    got = session.run(["probabilities"], {"input_ids": ids.numpy(), "lengths": [5]})[0]
    with torch.no_grad():
        expected = model(ids, torch.tensor([5])).softmax(1).numpy()
    assert abs(got - expected).max() < 1e-5


def test_mix_on_crops_fits_the_mix_on_validation_reviews_and_other_crops_of_them(imdb_fixture_dir, tiny_config_factory, tmp_path):
    """`--resume --mix-on-crops` on a finished n-gram run refits only the mix: on the validation reviews plus one
    crop of each, drawn with another seed than the crops whose ECE is reported; the network is unchanged."""
    import numpy as np

    from training.train import fit_mix, predict_parts, validation_crops

    _, argv = tiny_config_factory
    out = tmp_path / "mixcrops"
    base = argv(imdb_fixture_dir, out, epochs=1, bidirectional=False, ngram_buckets=101, ngram_c=1.0, crop_share=1.0)
    assert main(base) == 0
    before = json.loads((out / "metrics.json").read_text())
    assert main(base + ["--resume", "--mix-on-crops"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    model, saved = load_run(out)
    cfg, prepared = saved["train_config"], torch.load(out / "prepared.pt", weights_only=False)
    crops, labels = validation_crops(prepared, cfg.seed + 1)
    val_ids, val_y = prepared["val"]
    assert len(crops) >= 2  # the fixture's validation reviews are mostly one sentence
    for crop, label in zip(crops, labels):  # each a contiguous piece of a validation review, with its label
        assert any(
            y == label and any(r[i : i + len(crop)].tolist() == crop.tolist() for i in range(len(r) - len(crop) + 1))
            for r, y in zip(val_ids, val_y)
        )
    reported, _, _ = train_mod.sentence_crops(  # the crops `finish` reports ECE on
        val_ids, val_y, train_mod.sentence_enders(prepared["tokenizer_json"]), 1.0, cfg.seed
    )
    assert [c.tolist() for c in crops] != [c.tolist() for c in reported]
    parts = [torch.cat(pair) for pair in zip(predict_parts(model, val_ids, val_y), predict_parts(model, crops, labels))]
    assert np.allclose(after["mix"], fit_mix(*parts), atol=1e-4)
    # the run's first mix was the reviews-only fit of this same network
    assert np.allclose(before["mix"], fit_mix(*predict_parts(model, val_ids, val_y)), atol=1e-4)
    assert not np.allclose(after["mix"], before["mix"], atol=1e-4)
    assert after["history"] == before["history"]  # no epoch was trained again


# --- calibration ------------------------------------------------------------------------------------------------


def _synthetic(true_temperature: float, n: int = 20000, seed: int = 0):
    """Labels drawn from softmax(z); the model reports z * T, i.e. it is overconfident (T > 1) or under (T < 1)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=gen) * 1.5
    labels = torch.multinomial(z.softmax(1), 1, generator=gen).squeeze(1)
    return z * true_temperature, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    logits, labels = _synthetic(true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / fitted).softmax(1), labels)
    assert after < before
    assert after < 0.02
    assert F.cross_entropy(logits / fitted, labels) < F.cross_entropy(logits, labels)


def test_ece_of_a_perfectly_calibrated_and_of_an_overconfident_model():
    probs = torch.tensor([[0.2, 0.8]] * 10)
    labels = torch.tensor([1] * 8 + [0] * 2)  # 80% confident, 80% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[0.0, 1.0]] * 10)
    assert expected_calibration_error(sure, labels) == pytest.approx(0.2, abs=1e-6)


# --- CLI errors -------------------------------------------------------------------------------------------------


def test_cli_missing_dataset_exits_2(tmp_path, capsys):
    missing = tmp_path / "no-such-data.tar.gz"
    assert main(["--data", str(missing), "--out-dir", str(tmp_path / "run"), "--embeddings", "random"]) == 2
    err = capsys.readouterr().err
    assert "sentiment-train: error:" in err and "no-such-data.tar.gz" in err and "no such file" in err


def test_cli_unknown_label_exits_2(tmp_path, capsys):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "great", "label": "pos"}\n{"text": "so-so", "label": "meh"}\n', encoding="utf-8")
    assert main(["--data", str(data), "--out-dir", str(tmp_path / "run"), "--embeddings", "random"]) == 2
    err = capsys.readouterr().err
    assert "reviews.jsonl:2" in err and "unknown label 'meh'" in err


@pytest.mark.parametrize(
    "argv", [["--cell", "transformer"], ["--pooling", "attention"], ["--truncation", "middle"], ["--epochs", "two"]]
)
def test_cli_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_options_reach_the_configs():
    cfg, resume = parse_config(
        ["--cell", "gru", "--no-bidirectional", "--hidden-size", "32", "--lr", "0.5", "--truncation", "tail", "--epochs", "3"]
    )
    assert (cfg.model.cell, cfg.model.bidirectional, cfg.model.hidden_size) == ("gru", False, 32)
    assert (cfg.lr, cfg.truncation, cfg.epochs, resume) == (0.5, "tail", 3, False)


def test_make_train_recipe_parses_and_drops_final_punctuation_in_every_stage(tmp_path):
    """The `make train` commands are the shipped model's recipe: each `sentiment-train` line must parse (a typo in a
    flag would only surface an hour into a retrain), every training stage draws its short texts without their final
    punctuation, and the last step refits the mix on crops."""
    import shlex

    from training.pretrain import main as pretrain_main

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text().replace("\\\n", " ")
    recipe = makefile.split("\ntrain: venv\n")[1].split("\n\n")[0]
    commands = [
        shlex.split(line.replace("$(BIN)/", "").replace("$(RUN)", str(tmp_path)).replace("$(DATA)", "d.tgz"))
        for line in recipe.splitlines()
    ]
    trains = [parse_config(c[1:])[0] for c in commands if c[0] == "sentiment-train"]
    assert [c.epochs for c in trains] == [2, 4, 6, 6]
    assert [c.end_drop for c in trains[:3]] == [1.0, 1.0, 1.0] and trains[0].init_from == f"{tmp_path}/lm.pt"
    assert trains[3].mix_on_crops and not any(c.mix_on_crops for c in trains[:3])
    (pretrain,) = [c for c in commands if c[:3] == ["python", "-m", "training.pretrain"]]
    (tmp_path / "lm.pt").write_bytes(b"")  # an existing lm.pt is kept: the arguments are parsed, nothing trained
    assert pretrain_main(pretrain[3:]) == 0
