"""Counterfactual training examples (training/augment.py): where a negator is inserted, which sentences qualify,
and that every negated copy carries the opposite label."""

from __future__ import annotations

import numpy as np

from training.augment import augmentation, insertion_point, negation_examples, polar_sentences

WORDS = "[PAD] [UNK] . the film was is a an will would be not never no n't great awful waste gem recommend plot long and we"
VOCAB = {w: i for i, w in enumerate(WORDS.split())}
GRAMMAR = {
    "cues": {VOCAB["was"], VOCAB["is"], VOCAB["be"]},
    "articles": {VOCAB["a"], VOCAB["an"]},
    "modals": {VOCAB["will"], VOCAB["would"]},
    "be": VOCAB["be"],
}


def ids(text: str) -> np.ndarray:
    return np.array([VOCAB[w] for w in text.split()], np.int64)


def words(row) -> str:
    inverse = {i: w for w, i in VOCAB.items()}
    return " ".join(inverse[int(t)] for t in row)


def _point(text: str, word: str) -> int:
    sent = ids(text)
    return insertion_point(sent, int(np.flatnonzero(sent == VOCAB[word])[0]), **GRAMMAR)


def test_the_negator_goes_where_it_reads_naturally():
    assert _point("the film was great .", "great") == 3  # after the copula: "was | great"
    assert _point("the film was a waste .", "waste") == 3  # before the article: "was | a waste"
    assert _point("we would recommend the film .", "recommend") == 2  # after the modal: "would | recommend"
    assert _point("the film will be awful .", "awful") == 3  # "will | be awful", not "be | awful"
    assert _point("the great film .", "great") == -1  # no cue, article or modal before it: no natural slot
    assert _point("great film .", "great") == -1


def test_negated_copies_take_the_opposite_label_and_keep_every_token():
    rng = np.random.default_rng(0)
    sentences = [(ids("the film was a gem ."), 3, 1), (ids("the film will be awful ."), 3, -1)]
    xs, ys = negation_examples(sentences, [VOCAB["not"]], rng)
    assert [words(x) for x in xs] == [
        "the film was a gem .",
        "the film was not a gem .",
        "the film will be awful .",
        "the film will not be awful .",
    ]
    assert ys == [1, 0, 0, 1]


def test_only_sentences_with_one_agreeing_polar_word_and_no_negator_qualify():
    lexicon = {VOCAB["great"]: 1, VOCAB["awful"]: -1, VOCAB["waste"]: -1, VOCAB["gem"]: 1}
    reviews = [
        ids("the film was a gem . the film is great . the film was awful ."),  # positive review
        ids("the film was not awful . the film was a waste . the plot was great and awful ."),  # negative review
    ]
    enders = np.array([VOCAB["."]])
    negators = {VOCAB["not"], VOCAB["never"], VOCAB["no"], VOCAB["n't"]}
    found = polar_sentences(
        reviews, [1, 0], lexicon, enders, negators, GRAMMAR, np.random.default_rng(0), limit=10, max_tokens=20
    )
    got = sorted((words(s), at, polarity) for s, at, polarity in found)
    # "was awful" in the positive review disagrees with its label; "was not awful" is already negated; the last
    # sentence has two polar words.
    assert got == [("the film is great .", 3, 1), ("the film was a gem .", 3, 1), ("the film was a waste .", 3, -1)]


def test_augmentation_on_reviews_is_seeded_and_balanced():
    rng = np.random.default_rng(1)
    # The same words in both classes except the polar ones (a word only one class uses, "be" say, would be polar).
    pos = ["the film was great .", "the film was a gem .", "the film would be great ."]
    neg = ["the film was awful .", "the film was a waste .", "the film would be awful ."]
    reviews, labels = [], []
    for _ in range(110):  # enough documents for the lexicon's floor of 100 documents per word
        reviews.append(ids(" ".join(rng.permutation(pos)) + " the plot was long .")), labels.append(1)
        reviews.append(ids(" ".join(rng.permutation(neg)) + " the plot was long .")), labels.append(0)
    vocab = dict(VOCAB)
    xs, ys = augmentation(reviews, labels, vocab, 50, seed=3, phrases=True)
    again = augmentation(reviews, labels, vocab, 50, seed=3, phrases=True)
    assert [x.tolist() for x in xs] == [x.tolist() for x in again[0]] and ys == again[1]
    assert len(xs) == 100 and sum(ys) == 50  # pairs: each sentence and its negation, opposite labels
    negated = {words(x).replace(" never ", " not ") for x in xs[1::2]}
    assert negated == {
        "the film was not great .",
        "the film was not a gem .",
        "the film would not be great .",
        "the film was not awful .",
        "the film was not a waste .",
        "the film would not be awful .",
    }  # after a copula, before an article, after a modal; never the neutral sentence
    plain = {words(x).replace(" never ", " not ") for x in augmentation(reviews, labels, vocab, 50, seed=3)[0][1::2]}
    # without phrases (2.2.0's recipe): only after a copula, so no nouns, and "be | awful" after a modal
    assert plain == {
        "the film was not great .",
        "the film was not awful .",
        "the film would be not great .",
        "the film would be not awful .",
    }


def test_contractions_fuse_half_the_negators_with_the_word_before_them():
    vocab = dict(VOCAB) | {"wasn't": len(VOCAB), "won't": len(VOCAB) + 1}
    inverse = {i: w for w, i in vocab.items()}
    sentences = [(ids("the film was great ."), 3, 1), (ids("the film will be awful ."), 3, -1)] * 50
    fuse = {vocab["was"]: vocab["wasn't"], vocab["will"]: vocab["won't"]}
    xs, ys = negation_examples(sentences, [VOCAB["not"]], np.random.default_rng(0), fuse)
    negated = [" ".join(inverse[int(t)] for t in x) for x in xs[1::2]]
    assert set(negated) == {
        "the film was not great .",
        "the film wasn't great .",
        "the film will not be awful .",
        "the film won't be awful .",
    }
    assert 30 <= sum("n't" in s for s in negated) <= 70  # about half
    assert ys == [1, 0, 0, 1] * 50  # a contraction negates as "not" does: the label flips


def test_with_contractions_an_already_contracted_sentence_is_not_negated_again():
    vocab = dict(VOCAB) | {"very": len(VOCAB), "wasn't": len(VOCAB) + 1}
    inverse = {i: w for w, i in vocab.items()}
    reviews, labels = [], []
    for _ in range(110):  # "great" only in positive reviews, once plainly and once after "wasn't very"
        reviews.append(np.array([vocab[w] for w in "the film was great . the film wasn't very great .".split()]))
        reviews.append(np.array([vocab[w] for w in "the film was awful .".split()]))
        labels += [1, 0]

    def negated(contractions: bool) -> set[str]:
        xs, _ = augmentation(reviews, labels, vocab, 400, seed=3, contractions=contractions)
        return {" ".join(inverse[int(t)] for t in x).replace(" never ", " not ") for x in xs[1::2]}

    # Without contractions "wasn't" is not read as a negator, so "wasn't very great" gets a second one.
    assert "the film wasn't very not great ." in negated(False)
    assert negated(True) == {
        "the film was not great .",
        "the film wasn't great .",
        "the film was not awful .",
        "the film wasn't awful .",
    }
