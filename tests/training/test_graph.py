"""What the exported graphs claim, checked against torch on the same weights: the n-gram branch computes the same
rows and sum in the graph as in torch; the running log-odds at t is the model's answer for the text cut after t
(every position, every pooling); and baseline + per-token contributions add up to the final log-odds."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from training.ngrams import count_matrix, ngram_rows  # noqa: E402

BUCKETS = 53  # small and prime: plenty of collisions, so a wrong hash row would change scores
UNI = [("lstm", False, p, 1, BUCKETS) for p in ("meanmax", "mean", "max", "last")] + [
    ("gru", False, "meanmax", 2, BUCKETS),
    ("lstm", False, "meanmax", 1, 0),
]


def _ids(c):
    return "-".join(map(str, c))


def _batch(vocab: int, lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=gen)
    lens = torch.tensor(lengths)
    ids[torch.arange(max(lengths))[None, :] >= lens[:, None]] = 0
    return ids, lens


def _logodds(model, ids, lens, temperature):
    with torch.no_grad():
        logits = model(ids, lens) / temperature
    return (logits[:, 1] - logits[:, 0]).numpy()


@pytest.fixture(scope="module")
def run(export_random, ort_session):
    cache = {}

    def go(config, ids, lens):
        exp = export_random(*config)
        if exp.artifact not in cache:
            cache[exp.artifact] = ort_session(exp.artifact / "diagnostics.onnx")
        session = cache[exp.artifact]
        names = [o.name for o in session.get_outputs()]
        return exp, dict(zip(names, session.run(None, {"input_ids": ids.numpy(), "lengths": lens.numpy()})))

    return go


def _spec(**kw):
    from training.config import ModelConfig

    return ModelConfig(**{"vocab_size": 10, "ngram_buckets": BUCKETS, "ngram_order": 3, **kw})


def test_ngram_rows_hash_each_order_into_its_own_block():
    ids = torch.tensor([[5, 7, 9, 0]])
    rows = ngram_rows(ids, _spec())[0]
    assert rows[:, 0].tolist() == [5, 7, 9, 0]  # unigrams are their ids
    v1 = 11
    assert rows[1, 1].item() == v1 + (5 * v1 + 7) % BUCKETS  # bigram (5, 7)
    assert rows[0, 1].item() == v1 + (10 * v1 + 5) % BUCKETS  # (begin-of-text, 5)
    assert rows[2, 2].item() == v1 + BUCKETS + ((5 * v1 + 7) * v1 + 9) % BUCKETS
    assert ((rows[:, 1] >= v1) & (rows[:, 1] < v1 + BUCKETS)).all()
    counts = count_matrix([np.array([2, 3, 2, 3])], _spec())  # bigrams (bos, 2), (2, 3) twice, (3, 2)
    assert counts[0, 2] == 2 and counts[0, v1 + (2 * v1 + 3) % BUCKETS] == 2 and counts.sum() == 12


def test_negation_scope_marks_the_words_after_a_negator_until_a_breaker():
    from training.ngrams import negation_scope

    cfg = _spec(negation_window=3, negation_ids=(2,), scope_break_ids=(3,))
    #                  not  a  b  c  d  not  x  .  y
    ids = torch.tensor([[2, 5, 6, 7, 8, 2, 5, 3, 6]])
    assert negation_scope(ids, cfg)[0].tolist() == [0, 1, 1, 1, 0, 0, 1, 1, 0]
    rows = ngram_rows(ids, cfg)[0, :, 0]
    v1 = 11
    negated = v1 + 2 * BUCKETS
    assert rows.tolist() == [2, negated + 5, negated + 6, negated + 7, 8, 2, negated + 5, negated + 3, 6]
    assert cfg.ngram_table_size == negated + v1


@pytest.mark.parametrize("config", UNI, ids=_ids)
def test_graph_scores_equal_torch_with_the_ngram_branch(run, config):
    exp = run(config, *_batch(40, [3]))[0]
    ids, lens = _batch(exp.model.cfg.vocab_size, [exp.max_tokens, 9, 1, 5], seed=1)
    _, out = run(config, ids, lens)
    expected = _logodds(exp.model, ids, lens, exp.temperature)
    got = np.log(out["probabilities"][:, 1]) - np.log(out["probabilities"][:, 0])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if config[-1]:  # the branch really contributes: zeroing it changes the answer
        assert np.abs(exp.model.ngram_score(ids, lens).numpy()).max() > 0.1


@pytest.mark.parametrize("config", UNI, ids=_ids)
def test_running_logodds_is_the_answer_for_every_prefix(run, config):
    exp = run(config, *_batch(40, [3]))[0]
    ids, lens = _batch(exp.model.cfg.vocab_size, [exp.max_tokens, 7, 1], seed=2)
    _, out = run(config, ids, lens)
    for b, n in enumerate(lens.tolist()):
        prefixes = ids[b, :n].repeat(n, 1)
        prefix_lens = torch.arange(1, n + 1)
        prefixes[torch.arange(n)[None, :] >= prefix_lens[:, None]] = 0
        expected = _logodds(exp.model, prefixes, prefix_lens, exp.temperature)
        np.testing.assert_allclose(out["running_logodds"][b, :n], expected, atol=1e-4)
        np.testing.assert_allclose(out["running_positive"][b, :n], 1 / (1 + np.exp(-expected)), atol=1e-5)
        assert (out["running_logodds"][b, n:] == 0).all() and (out["contribution"][b, n:] == 0).all()


@pytest.mark.parametrize("config", UNI, ids=_ids)
def test_contributions_add_up_to_the_final_logodds(run, config):
    exp = run(config, *_batch(40, [3]))[0]
    ids, lens = _batch(exp.model.cfg.vocab_size, [exp.max_tokens, 6, 1], seed=3)
    _, out = run(config, ids, lens)
    final = _logodds(exp.model, ids, lens, exp.temperature)
    total = out["contribution_baseline"] + out["contribution"].sum(1)
    np.testing.assert_allclose(total, final, atol=1e-4)
    # the baseline is a property of the model, the same for every text, and not the whole answer
    assert np.ptp(out["contribution_baseline"]) == 0
    assert np.abs(out["contribution"]).sum() > 0.1


def test_an_ngram_weight_is_shared_by_its_tokens(export_random, ort_session):
    """A model whose only signal is one bigram's weight credits exactly its two tokens, half each."""
    exp = export_random("lstm", False, "mean", 1, BUCKETS)
    cfg = exp.model.cfg
    ids = torch.tensor([[4, 9, 11, 9]])
    row = ngram_rows(ids, cfg)[0, 2, 1].item()  # bigram (9, 11)
    from training.config import TrainConfig
    from training.export import export_model
    from training.models import RecurrentClassifier

    model = RecurrentClassifier(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ngram.weight[row] = 2.0
        model.mix.copy_(torch.tensor([1.0, 1.0, 0.0]))
    out_dir = exp.artifact.parent / "one-bigram"
    export_model(
        model,
        (exp.artifact / "tokenizer.json").read_text(),
        out_dir,
        name="one-bigram",
        version="0",
        train_cfg=TrainConfig(max_tokens=24),
        metrics={
            "val_accuracy": 0.5,
            "ece_before": 0,
            "ece_after": 0,
            "val_nll_before": 0,
            "val_nll_after": 0,
            "train_seconds": 0,
        },
        temperature=1.0,
    )
    session = ort_session(out_dir / "diagnostics.onnx")
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"input_ids": ids.numpy(), "lengths": np.array([4])})))
    np.testing.assert_allclose(out["contribution"][0], [0, 1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(out["running_logodds"][0], [0, 0, 2, 2], atol=1e-6)
