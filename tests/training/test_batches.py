"""What one epoch is made of: sentence crops and the end-punctuation drop (training/batches.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import train as train_mod
from training.batches import drop_final_enders, sentence_crops

ENDERS = np.array([7, 8], dtype=np.int64)  # "." and "!" in these made-up ids


def _texts():
    return [
        np.array([3, 4, 5, 7]),
        np.array([3, 7, 4, 5, 8]),  # a full stop inside stays; only the final "!" may go
        np.array([3, 4, 5]),  # no final punctuation: nothing to drop
        np.array([4, 7]),  # would leave one token: kept whole
        np.array([3, 4, 8, 8, 7]),  # a run of them goes together
    ] * 40


def test_no_share_changes_nothing():
    texts = _texts()
    assert drop_final_enders(texts, ENDERS, 0.0, seed=1) is texts


def test_a_full_share_drops_every_final_ender_and_nothing_else():
    out = drop_final_enders(_texts(), ENDERS, 1.0, seed=1)
    for before, after in zip(_texts(), out):
        kept = before.tolist()
        while kept and kept[-1] in ENDERS:
            kept.pop()
        if len(kept) >= 2:
            assert after.tolist() == kept
        else:
            assert after.tolist() == before.tolist()


def test_a_share_drops_about_that_share_and_is_seeded():
    texts = _texts()
    out = drop_final_enders(texts, ENDERS, 0.5, seed=1)
    droppable = [i for i, t in enumerate(texts) if len(t) > 2 and t[-1] in ENDERS]
    dropped = [i for i in droppable if len(out[i]) < len(texts[i])]
    assert 0.35 < len(dropped) / len(droppable) < 0.65
    again = drop_final_enders(texts, ENDERS, 0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    other = drop_final_enders(texts, ENDERS, 0.5, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(out, other))


def test_crops_are_whole_sentences_of_their_review_with_its_label():
    review = np.array([3, 4, 7, 5, 6, 3, 8, 4, 4, 5, 7])
    ids, labels, sources = sentence_crops([review, review], [1, 0], ENDERS, share=1.0, seed=3)
    assert ids and labels == [[1, 0][s] for s in sources]
    text = review.tolist()
    for crop in ids:
        start = next(i for i in range(len(text)) if text[i : i + len(crop)] == crop.tolist())
        assert start == 0 or text[start - 1] in ENDERS  # starts at a sentence start
        assert crop[-1] in ENDERS  # ends at a sentence end


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_run_with_end_drop_trains_on_short_texts_without_final_punctuation(
    share, imdb_fixture_dir, tiny_config_factory, tmp_path, monkeypatch
):
    """Whole reviews keep their final punctuation; the epoch's crops lose theirs (the negation and contrast examples
    go through the same call; the fixture's vocabulary is too small to make them)."""
    config, _ = tiny_config_factory
    seen: list[list[np.ndarray]] = []
    real_batches = train_mod.batches

    def spy(ids, labels, batch_size, seed, *args, **kwargs):
        if seed is not None:  # an epoch's training batches (evaluation passes seed=None)
            seen.append(list(ids))
        return real_batches(ids, labels, batch_size, seed, *args, **kwargs)

    monkeypatch.setattr(train_mod, "batches", spy)
    train_mod.train(config(imdb_fixture_dir, tmp_path / "run", epochs=1, end_drop=share, crop_share=1.0))
    prepared = torch.load(tmp_path / "run" / "prepared.pt", weights_only=False)
    n_reviews = len(prepared["train"][0])
    enders = train_mod.sentence_enders(prepared["tokenizer_json"])
    (epoch,) = seen
    assert [a.tolist() for a in epoch[:n_reviews]] == [a.tolist() for a in prepared["train"][0]]
    drawn = epoch[n_reviews:]
    assert len(drawn) >= 3  # the fixture's reviews are mostly one sentence: few crops
    ending = sum(bool(np.isin(t[-1], enders)) for t in drawn)
    if share == 0.0:
        assert ending / len(drawn) > 0.9  # crops and counterfactuals end at a sentence end
    else:
        # only where dropping the final run of punctuation would leave fewer than two tokens
        assert all(np.isin(t, enders).sum() >= len(t) - 1 for t in drawn if np.isin(t[-1], enders))
