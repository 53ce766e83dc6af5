"""RecurrentClassifier: padding never changes a review's result (alone == inside a padded batch)."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig
from training.models import RecurrentClassifier

VOCAB = 50
POOLINGS = ["last", "mean", "max", "meanmax"]


def _model(cell, bidirectional, pooling, num_layers, seed=0) -> RecurrentClassifier:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        embedding_dim=7,
        hidden_size=5,
        cell=cell,
        bidirectional=bidirectional,
        pooling=pooling,
        num_layers=num_layers,
        dropout=0.5,
        embedding_dropout=0.5,
    )
    model = RecurrentClassifier(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return model.eval()


def _padded_batch(reviews: list[torch.Tensor], extra: int = 0):
    lengths = torch.tensor([len(r) for r in reviews])
    ids = torch.zeros(len(reviews), int(lengths.max()) + extra, dtype=torch.long)
    for b, r in enumerate(reviews):
        ids[b, : len(r)] = r
    return ids, lengths


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_review_scores_the_same_alone_and_in_a_padded_batch(cell, bidirectional, pooling, num_layers):
    model = _model(cell, bidirectional, pooling, num_layers)
    gen = torch.Generator().manual_seed(1)
    reviews = [torch.randint(1, VOCAB, (n,), generator=gen) for n in (6, 17, 1, 11, 17, 3)]
    ids, lengths = _padded_batch(reviews, extra=4)  # every row padded, even the longest
    with torch.no_grad():
        batch = model(ids, lengths)
        layers = model.encode(ids, lengths)
        for b, review in enumerate(reviews):
            alone_ids, alone_len = _padded_batch([review])
            alone = model(alone_ids, alone_len)
            assert (batch[b] - alone[0]).abs().max().item() <= 1e-5
            # every layer's states agree too, and are zero past the review
            for out_batch, out_alone in zip(layers, model.encode(alone_ids, alone_len)):
                n = len(review)
                assert (out_batch[b, :n] - out_alone[0]).abs().max().item() <= 1e-5
                assert (out_batch[b, n:] == 0).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_token_contents_do_not_matter(pooling):
    """Whatever sits past a length (pad or real ids), the result is the same: masking, not the pad id, decides."""
    model = _model("lstm", True, pooling, 2)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (4, 12), generator=gen)
    lengths = torch.tensor([12, 3, 7, 1])
    junk = ids.clone()
    for b, n in enumerate(lengths.tolist()):
        ids[b, n:] = 0
    with torch.no_grad():
        assert torch.allclose(model(ids, lengths), model(junk, lengths), atol=1e-6)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = _model("gru", True, "meanmax", 2)
    ids, lengths = torch.randint(1, VOCAB, (3, 10)), torch.tensor([10, 10, 10])
    with torch.no_grad():
        assert torch.equal(model(ids, lengths), model(ids, lengths))
        model.train()
        torch.manual_seed(0)
        a = model(ids, lengths)
        b = model(ids, lengths)
    assert not torch.equal(a, b)


@pytest.mark.parametrize(("pooling", "per_pool"), [("last", 1), ("mean", 1), ("max", 1), ("meanmax", 2)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_feature_size_matches_pooled_features(pooling, per_pool, bidirectional):
    model = _model("rnn", bidirectional, pooling, 1)
    ids, lengths = torch.randint(1, VOCAB, (2, 5)), torch.tensor([5, 2])
    with torch.no_grad():
        features = model.pool(model.encode(ids, lengths)[-1], lengths)
    assert features.shape == (2, model.cfg.feature_size) == (2, 5 * (2 if bidirectional else 1) * per_pool)


def test_load_embeddings_keeps_pad_row_zero():
    model = _model("lstm", False, "mean", 1)
    vectors = torch.randn(VOCAB, 7)
    model.load_embeddings(vectors)
    assert torch.equal(model.embedding.weight[1:], vectors[1:])
    assert (model.embedding.weight[0] == 0).all()
