"""Embedding initialisation: GloVe-format files and word2vec trained on the reviews themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.embeddings import load_glove, train_word2vec

ROOT = Path(__file__).resolve().parents[2]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "great": 2, "awful": 3, "plot": 4}


def test_glove_rows_land_on_their_ids_and_pad_stays_zero(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("great 1 2 3\nplot 4 5 6\nunrelated 7 8 9\n", encoding="utf-8")
    matrix, coverage = load_glove(path, VOCAB, dim=3, seed=0)
    assert matrix.shape == (5, 3)
    np.testing.assert_array_equal(matrix[2], [1, 2, 3])
    np.testing.assert_array_equal(matrix[4], [4, 5, 6])
    assert not matrix[0].any()
    assert coverage == pytest.approx(2 / 5)


def test_glove_accepts_a_word2vec_text_header(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("2 3\ngreat 1 2 3\nawful -1 -2 -3\n", encoding="utf-8")
    matrix, _ = load_glove(path, VOCAB, dim=3, seed=0)
    np.testing.assert_array_equal(matrix[3], [-1, -2, -3])


def test_glove_with_the_wrong_dimension_says_which_line(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("great 1 2 3\nplot 4 5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"glove.txt:2: expected a word and 3 numbers"):
        load_glove(path, VOCAB, dim=3, seed=0)


def test_word2vec_learns_vectors_for_the_vocabulary():
    sentences = [["the", "plot", "was", "great"], ["great", "plot"], ["awful", "plot", "was", "awful"]] * 50
    matrix, coverage = train_word2vec(sentences, VOCAB, dim=8, epochs=2, seed=0, workers=1)
    assert matrix.shape == (5, 8) and matrix.dtype == np.float32
    assert coverage == pytest.approx(3 / 5)  # great, awful, plot (not the special tokens)
    assert not matrix[0].any()
    # Trained rows are rescaled to a spread comparable to the random ones (std ~0.5 overall, not 0 or huge).
    assert 0.05 < float(np.std(matrix[2:])) < 2.0


def test_word2vec_gives_the_same_vectors_in_every_process(tmp_path):
    # With several workers, thread scheduling decides the order of updates once the corpus spans several jobs
    # (10,000 words each): two processes, with different string-hash seeds too, must agree, so that `make train`
    # reproduces its model.
    script = (
        "import sys, numpy as np\n"
        "from training.embeddings import train_word2vec\n"
        "s = [['the', 'plot', 'was', 'great'], ['great', 'plot'], ['awful', 'plot', 'was', 'awful']] * 4000\n"
        "vocab = {'[PAD]': 0, '[UNK]': 1, 'great': 2, 'awful': 3, 'plot': 4}\n"
        "np.save(sys.argv[1], train_word2vec(s, vocab, dim=8, epochs=2, seed=0)[0])\n"
    )
    out = []
    for run in ("1", "2"):
        path = tmp_path / f"w2v{run}.npy"
        env = {**os.environ, "PYTHONHASHSEED": run}
        subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, cwd=ROOT)
        out.append(np.load(path))
    np.testing.assert_array_equal(out[0], out[1])
