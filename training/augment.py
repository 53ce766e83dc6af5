"""Training examples built from IMDB itself for what whole reviews teach poorly: negation and contrast.

Review-level labels cannot teach phrase-level negation: in the training split "not bad" sits in more negative
reviews (84) than positive ones (58), because reviews say "the acting was not bad, but...". So the recurrent network
learns that "Not bad at all!" is negative. Two kinds of counterfactual examples (in the spirit of Kaushik et al.
2020, "Learning the difference that makes a difference") fix the phrase-level reading without new data:

- negation: a one-sentence crop whose only strongly polar word (by naive-Bayes log-count ratio on the training
  split) agrees with its review's label keeps that label; the same crop with "not" / "never" inserted gets the
  opposite label. Where it goes depends on what precedes the word: after a copula or degree word ("The acting was
  bad." -> "The acting was not bad." positive), before an article that follows one ("It was a waste of time." ->
  "It was not a waste of time."), or after a modal ("You will be disappointed." -> "You will not be disappointed.",
  "I would recommend it." -> "I would not recommend it." negative), so nouns and verbs are negated too, not only
  adjectives (the last two with `--negation-phrases`). With `--negation-contractions`, half of the "not"s fuse
  with the copula or modal before them ("was not bad" -> "wasn't bad", "will not be disappointed" -> "won't be
  disappointed"): the tokenizer keeps "wasn't" and "won't" as single words, so what is learnt for "not" does not
  carry over to them, and review labels teach them little ("wasn't bad" is in 29 negative training reviews, 7
  positive).
- contrast: two such crops of opposite polarity joined by ", but" take the second one's label ("The plot is dull,
  but the cast is wonderful." -> positive), the discourse role of "but".
Everything works on token ids of the training split only.
"""

from __future__ import annotations

import numpy as np

from training.ngrams import NEGATORS

# The copulas and modals a negator is inserted after, and their negated contractions (single tokens here).
CONTRACTIONS = {
    "is": "isn't",
    "was": "wasn't",
    "are": "aren't",
    "were": "weren't",
    "will": "won't",
    "would": "wouldn't",
    "can": "can't",
    "could": "couldn't",
    "should": "shouldn't",
}


def predicative_words(ids: list[np.ndarray], cues: list[int], vocab_size: int, min_count: int = 20) -> np.ndarray:
    """[vocab] bool: words seen at least `min_count` times right after a cue ("is", "was", "very", ...), i.e. words
    that read naturally after an inserted "not" ("was not boring", not "a not waste")."""
    counts = np.zeros(vocab_size, np.int64)
    cue = np.zeros(vocab_size, bool)
    cue[cues] = True
    for row in ids:
        if len(row) > 1:
            np.add.at(counts, row[1:][cue[row[:-1]]], 1)
    return counts >= min_count


def polar_lexicon(
    ids: list[np.ndarray],
    labels: list[int],
    vocab_size: int,
    min_docs: int = 100,
    top: int = 150,
    predicative: np.ndarray | None = None,
) -> dict[int, int]:
    """The `top` most positive and most negative words (document frequency >= min_docs) by NB log-count ratio."""
    pos, neg = np.ones(vocab_size), np.ones(vocab_size)
    for row, label in zip(ids, labels):
        (pos if label == 1 else neg)[np.unique(row)] += 1
    ratio = np.log(pos / pos.sum()) - np.log(neg / neg.sum())
    ratio[(pos + neg) < min_docs] = 0.0
    ratio[:2] = 0.0  # [PAD], [UNK]
    if predicative is not None:  # "not" goes before the word, so keep words that follow "is", "very", ...
        ratio[~predicative] = 0.0
    order = np.argsort(ratio)
    return {int(i): -1 for i in order[:top] if ratio[i] < 0} | {int(i): 1 for i in order[::-1][:top] if ratio[i] > 0}


def _sentences(row: np.ndarray, enders: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    ends = np.flatnonzero(np.isin(row, enders)) + 1
    bounds = np.concatenate([[0], ends])
    return [row[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if 4 <= b - a <= max_tokens]


def insertion_point(sent: np.ndarray, pos: int, cues: set[int], articles: set[int], modals: set[int], be: int) -> int:
    """Where a negator reads naturally for the polar word at `pos`, or -1: after a modal ("would | recommend",
    "will | be disappointed"), after a cue ("was | dull"), or after a cue and before an article ("was | a waste")."""
    before = [int(t) for t in sent[max(0, pos - 2) : pos]]
    if before and before[-1] in modals:
        return pos
    if len(before) == 2 and before[0] in modals and before[1] == be:
        return pos - 1
    if before and before[-1] in cues:
        return pos
    if len(before) == 2 and before[0] in cues and before[1] in articles:
        return pos - 1
    return -1


def polar_sentences(
    ids: list[np.ndarray],
    labels: list[int],
    lexicon: dict[int, int],
    enders: np.ndarray,
    negators: set[int],
    grammar: dict,
    rng: np.random.Generator,
    limit: int,
    max_tokens: int = 20,
) -> list[tuple[np.ndarray, int, int]]:
    """(sentence, where to insert a negator, polarity) from reviews whose label agrees with the sentence's one polar
    word. `grammar`: the id sets insertion_point reads ("cues", "articles", "modals") and the id of "be"."""
    out: list[tuple[np.ndarray, int, int]] = []
    # An existing negator just before the word would make the "negated" copy a double negation; the phrase patterns
    # reach back to a modal or a copula two tokens away, so they look one token further.
    lookback = 4 if grammar["modals"] else 3
    for i in rng.permutation(len(ids)):
        for sent in _sentences(ids[i], enders, max_tokens):
            hits = [(p, lexicon[int(t)]) for p, t in enumerate(sent) if int(t) in lexicon]
            if len(hits) != 1:
                continue
            pos, polarity = hits[0]
            at = insertion_point(sent, pos, **grammar)
            if (
                at < 0
                or (polarity == 1) != (labels[i] == 1)
                or any(int(t) in negators for t in sent[max(0, pos - lookback) : pos])
            ):
                continue
            out.append((sent, at, polarity))
            if len(out) >= limit:
                return out
    return out


def negation_examples(
    sentences, insert_ids: list[int], rng: np.random.Generator, contractions: dict[int, int] | None = None
) -> tuple[list, list]:
    """Each sentence with its label, and its negated counterfactual (a negator inserted at the sentence's insertion
    point) with the opposite label. `contractions` (word before the insertion point -> its negated contraction, "was"
    -> "wasn't"): half the time, that word becomes the contraction instead of taking an inserted negator."""
    xs, ys = [], []
    for sent, pos, polarity in sentences:
        # Drawn even when the contraction is used, so that without contractions the draws (and the examples) are
        # exactly those of the recipe the shipped model was trained with.
        negator = insert_ids[int(rng.integers(len(insert_ids)))]
        fused = contractions.get(int(sent[pos - 1])) if contractions and pos > 0 else None
        if fused is not None and rng.random() < 0.5:
            negated = np.concatenate([sent[: pos - 1], [fused], sent[pos:]])
        else:
            negated = np.concatenate([sent[:pos], [negator], sent[pos:]])
        xs += [sent, negated.astype(np.int64)]
        ys += [int(polarity == 1), int(polarity != 1)]
    return xs, ys


def contrast_examples(sentences, comma: int, but: int, rng: np.random.Generator, n: int) -> tuple[list, list]:
    """ "A, but B" from sentences of opposite polarity: B's label. The first sentence's final punctuation goes."""
    by_sign = {1: [s for s in sentences if s[2] == 1], -1: [s for s in sentences if s[2] == -1]}
    xs, ys = [], []
    if not by_sign[1] or not by_sign[-1]:
        return xs, ys
    for _ in range(n):
        second = 1 if rng.random() < 0.5 else -1
        a = by_sign[-second][int(rng.integers(len(by_sign[-second])))][0]
        b = by_sign[second][int(rng.integers(len(by_sign[second])))][0]
        xs.append(np.concatenate([a[:-1], [comma, but], b]).astype(np.int64))
        ys.append(int(second == 1))
    return xs, ys


def augmentation(
    train_ids: list[np.ndarray],
    train_y: list[int],
    vocab: dict[str, int],
    count: int,
    seed: int,
    phrases: bool = False,
    contractions: bool = False,
) -> tuple[list[np.ndarray], list[int]]:
    """About `count` negation pairs' worth of examples plus count // 2 contrast examples for one epoch. `phrases`:
    also negate nouns after an article and verbs after a modal (otherwise only words after a copula or degree word,
    the recipe 2.2.0 was trained with). `contractions`: half the negated copies say "wasn't" / "won't" instead of
    "was not" / "will not"."""
    if count <= 0:
        return [], []
    rng = np.random.default_rng(seed)

    def ids(*words: str) -> list[int]:
        return [vocab[w] for w in words if w in vocab]

    cues = ids("is", "was", "are", "were", "be", "very", "so", "too", "quite", "really")
    articles, modals = (ids("a", "an"), ids("will", "would", "can", "could", "should")) if phrases else ([], [])
    # words only: no punctuation or numbers, and no negators ("has not nothing")
    wordlike = np.zeros(len(vocab), bool)
    wordlike[[i for w, i in vocab.items() if w.isalpha() and w not in NEGATORS]] = True
    negatable = predicative_words(train_ids, cues + articles + modals, len(vocab)) & wordlike
    lexicon = polar_lexicon(train_ids, train_y, len(vocab), predicative=negatable)
    enders = np.array(ids(".", "!", "?"), dtype=np.int64)
    negators = set(ids("not", "never", "no", "n't"))
    fuse: dict[int, int] = {}
    if contractions:
        # "wasn't great" is already negated, so it must not be picked as a plain polar sentence either.
        negators |= set(ids(*NEGATORS))
        fuse = {vocab[w]: vocab[c] for w, c in CONTRACTIONS.items() if w in vocab and c in vocab}
    grammar = {"cues": set(cues), "articles": set(articles), "modals": set(modals), "be": vocab.get("be", -1)}
    sentences = polar_sentences(train_ids, train_y, lexicon, enders, negators, grammar, rng, limit=count)
    xs, ys = negation_examples(sentences, ids("not", "not", "never"), rng, fuse)
    if "," not in vocab or "but" not in vocab:  # tiny vocabularies (tests)
        return xs, ys
    cx, cy = contrast_examples(sentences, vocab[","], vocab["but"], rng, count // 2)
    return xs + cx, ys + cy
