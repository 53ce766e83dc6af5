"""Adversarial training on embeddings (training/adversarial.py): the perturbation has the asked-for size, sits only on
the review's tokens, points where the loss grows fastest, and a run trained with it resumes and reports as usual."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.adversarial import adversarial_step, perturbation
from training.config import ModelConfig
from training.models import RecurrentClassifier
from training.train import train


def _model() -> RecurrentClassifier:
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(vocab_size=40, embedding_dim=8, hidden_size=6, bidirectional=False))
    return model.eval()  # no dropout: losses compare exactly


def _batch():
    ids = torch.tensor([[3, 7, 9, 2, 5], [4, 8, 0, 0, 0]])
    return ids, torch.tensor([5, 2]), torch.tensor([1, 0])


def _loss_gradient(model, ids, lengths, y):
    embedded = model.embedding(ids).detach().requires_grad_(True)
    loss = F.cross_entropy(model.rnn_logits(ids, lengths, embedded=embedded), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, embedded)
    return embedded.detach(), grad


def test_the_perturbation_has_norm_scale_per_review_and_spares_padding():
    model, (ids, lengths, y) = _model(), _batch()
    _, grad = _loss_gradient(model, ids, lengths, y)
    r = perturbation(grad, 0.5)
    assert r.flatten(1).norm(dim=1).tolist() == pytest.approx([0.5, 0.5])
    assert (r[1, 2:] == 0).all()  # the forward LSTM is causal: padding never gets a gradient, so never a push
    assert (perturbation(torch.zeros_like(grad), 0.5) == 0).all()


def test_the_gradient_direction_hurts_more_than_random_directions_of_the_same_size():
    model, (ids, lengths, y) = _model(), _batch()
    embedded, grad = _loss_gradient(model, ids, lengths, y)

    def loss(r):
        return F.cross_entropy(model.rnn_logits(ids, lengths, embedded=embedded + r), y).item()

    adversarial = loss(perturbation(grad, 0.1))
    gen = torch.Generator().manual_seed(0)
    randoms = [loss(perturbation(torch.randn(grad.shape, generator=gen) * (grad != 0), 0.1)) for _ in range(20)]
    assert adversarial > loss(torch.zeros_like(embedded)) and adversarial > max(randoms)


def test_a_step_accumulates_the_clean_and_the_adversarial_gradients():
    model, (ids, lengths, y) = _model(), _batch()
    model.zero_grad()
    logits, clean, adv_loss = adversarial_step(model, ids, lengths, y, eps=0.0)  # eps 0: adversarial = clean loss
    assert clean.item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert adv_loss.item() == pytest.approx(clean.item())
    both = model.head.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model.rnn_logits(ids, lengths), y).backward()
    assert torch.allclose(both, 2 * model.head.weight.grad, atol=1e-6)  # clean + identical adversarial = twice clean
    model.zero_grad()
    _, _, adv_loss = adversarial_step(model, ids, lengths, y, eps=5.0)
    assert adv_loss.item() > clean.item()


def test_a_run_with_adversarial_training_resumes_with_the_setting(imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, argv = tiny_config_factory
    out = tmp_path / "adv"
    train(config(imdb_fixture_dir, out, model={"bidirectional": False}, epochs=1))
    cfg = config(imdb_fixture_dir, out, model={"bidirectional": False}, epochs=2)
    cfg.adversarial_eps = 2.0
    metrics = train(cfg, resume=True)
    assert metrics["epochs_run"] == 2
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["train_config"].adversarial_eps == 2.0  # what the resumed stage trained with is on record
    assert len(metrics["history"]) == 2 and metrics["history"][1]["train_loss"] > 0
