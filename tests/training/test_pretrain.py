"""Language-model pretraining (training/pretrain.py): the network learns to predict the next word of unlabeled
text, and a classifier run started with `init_from` begins from exactly those weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.pretrain import SampledSoftmaxLM, chunks, pretrain
from training.train import prepare, train


def test_chunks_cut_reviews_into_pieces_and_drop_what_predicts_nothing():
    rows = [np.arange(1, 8), np.array([5]), np.arange(1, 4)]
    assert [c.tolist() for c in chunks(rows, 3)] == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]  # [7] and [5] predict nothing


def _tiny(tiny_config_factory, data, out):
    config, _ = tiny_config_factory
    out.mkdir(parents=True)
    cfg = config(data, out, model={"bidirectional": False}, epochs=1)
    prepared = prepare(cfg, out)
    cfg.model.vocab_size = len(json.loads(prepared["tokenizer_json"])["model"]["vocab"])
    return cfg, prepared


def test_pretraining_learns_to_predict_the_next_word(imdb_fixture_dir, tiny_config_factory, tmp_path):
    cfg, prepared = _tiny(tiny_config_factory, imdb_fixture_dir, tmp_path / "run")
    # The fixture's reviews repeat a small vocabulary: a network that reads them must beat the untrained one.
    _, history = pretrain(cfg, prepared, [], epochs=4, chunk=32, negatives=8, lr=0.01)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["sampled_loss"] < 0.9 * history[0]["sampled_loss"]


def test_a_sampled_true_word_is_never_counted_as_a_negative(imdb_fixture_dir, tiny_config_factory, tmp_path):
    cfg, prepared = _tiny(tiny_config_factory, imdb_fixture_dir, tmp_path / "run")
    from training.models import RecurrentClassifier

    counts = np.zeros(cfg.model.vocab_size)
    counts[7] = 1e9  # every negative drawn is word 7 ...
    lm = SampledSoftmaxLM(RecurrentClassifier(cfg.model), counts, negatives=4)
    x = torch.tensor([[3, 7, 7, 7]])  # ... and every target is word 7: nothing competes, the loss is 0
    assert lm.loss(x, torch.tensor([4])).item() == pytest.approx(0.0, abs=1e-6)


def test_a_run_started_from_a_pretraining_begins_from_its_weights(imdb_fixture_dir, tiny_config_factory, tmp_path):
    out = tmp_path / "run"
    cfg, prepared = _tiny(tiny_config_factory, imdb_fixture_dir, out)
    state, _ = pretrain(cfg, prepared, [], epochs=1, chunk=32, negatives=8)
    torch.save({"network": state}, tmp_path / "lm.pt")
    cfg.init_from, cfg.lr, cfg.weight_decay = str(tmp_path / "lm.pt"), 0.0, 0.0  # a step that moves nothing
    train(cfg)
    trained = torch.load(out / "model.pt", weights_only=False)["model"]
    for name, value in state.items():
        assert torch.equal(trained[name], value), name
    cfg.model.hidden_size += 1
    with pytest.raises(ValueError, match="pretrained for another network"):
        train(cfg)


def test_a_finished_pretraining_is_kept_when_make_train_runs_again(tmp_path):
    from training.pretrain import main

    (tmp_path / "lm.pt").write_bytes(b"done")
    # No data is read: the --data path does not even exist.
    assert main(["--run", str(tmp_path), "--data", str(tmp_path / "missing.tar.gz")]) == 0
    assert (tmp_path / "lm.pt").read_bytes() == b"done"
    assert main(["--run", str(tmp_path), "--data", str(tmp_path / "missing.tar.gz"), "--force"]) == 2  # redone: no data
