"""tokenizer.json (training.tokenizer) and the shared TextTokenizer with its truncation policy."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tokenizers import Tokenizer

from service.tokenization import PAD, UNK, TextTokenizer, kept_positions
from training.tokenizer import WORD_PATTERN, build_tokenizer


@pytest.fixture(scope="module")
def text_tok(fixture_tokenizer):
    return TextTokenizer(fixture_tokenizer, max_tokens=1000, truncation="head")


def test_special_ids(fixture_tokenizer):
    assert fixture_tokenizer.token_to_id(PAD) == 0
    assert fixture_tokenizer.token_to_id(UNK) == 1
    tok = TextTokenizer(fixture_tokenizer, max_tokens=10)
    assert (tok.pad_id, tok.unk_id) == (0, 1)


def test_special_ids_survive_a_vocabulary_cap(imdb_fixture):
    tok = build_tokenizer([r.text for r in imdb_fixture.reviews], max_vocab=12, min_frequency=1)
    assert tok.get_vocab_size() == 12
    assert (tok.token_to_id(PAD), tok.token_to_id(UNK)) == (0, 1)


def test_tokenizer_without_pad_zero_is_rejected():
    from tokenizers.models import WordLevel

    with pytest.raises(ValueError, match=r"\[PAD\]"):
        TextTokenizer(Tokenizer(WordLevel({"[UNK]": 0, "[PAD]": 1, "good": 2}, unk_token="[UNK]")), max_tokens=5)


@pytest.mark.parametrize(
    "text",
    [
        "Great film<br /><br />I loved it",
        "Great film<br/>I loved it",
        "Great film<BR>I loved it",
        "Great film< br / >I loved it",
        "Great <i>film</i><br />I loved it",
    ],
)
def test_html_line_breaks_and_tags_are_cleaned(text_tok, text):
    assert text_tok.tokens(text) == ["great", "film", "i", "loved", "it"]
    enc = text_tok.encode(text)
    assert [text_tok.tokenizer.id_to_token(int(i)) for i in enc.ids] == ["great", "film", "i", "loved", "it"]


def test_br_tag_never_leaks_tokens(imdb_fixture, fixture_tokenizer):
    """The fixture reviews are full of <br />: no 'br', '<', '/' or '>' can come from them."""
    vocab = fixture_tokenizer.get_vocab()
    assert "br" not in vocab and "<" not in vocab and ">" not in vocab and "/" not in vocab
    tok = TextTokenizer(fixture_tokenizer, max_tokens=1000)
    for review in imdb_fixture.reviews:
        assert "br" not in tok.tokens(review.text)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Tom &amp; Jerry", ["tom", "&", "jerry"]),
        ("a &quot;classic&quot;", ["a", '"', "classic", '"']),
        ("I didn&#39;t like it", ["i", "didn't", "like", "it"]),
        ("I didn&#039;t like it", ["i", "didn't", "like", "it"]),
        ("5 &lt; 10&nbsp;stars", ["5", "<", "10", "stars"]),
    ],
)
def test_entities_are_decoded(text_tok, text, tokens):
    assert text_tok.tokens(text) == tokens


def test_words_keep_inner_apostrophes_and_punctuation_is_split(text_tok):
    assert text_tok.tokens("Don't miss it!!! :)") == ["don't", "miss", "it", "!", "!", "!", ":", ")"]


def test_offsets_slice_back_to_the_token_text(imdb_fixture, fixture_tokenizer):
    tok = TextTokenizer(fixture_tokenizer, max_tokens=1000)
    texts = [r.text for r in imdb_fixture.reviews] + ["Loved IT.<br /><br />GREAT &amp; wonderful, didn&#39;t hate"]
    for text, enc in zip(texts, tok.encode_batch(texts)):
        words = tok.tokens(text)
        assert enc.total_tokens == len(words)
        spans = enc.offsets
        assert all(0 <= a < b <= len(text) for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # in order, no overlap
        for word, (a, b) in zip(words, spans):
            if re.fullmatch(r"[\w']+", text[a:b]):  # entity-decoded tokens ("&amp;" -> "&") are the exception
                assert text[a:b].lower() == word
        # no token comes from inside a <br /> tag
        for m in re.finditer(r"<br />", text):
            assert not any(a < m.end() and b > m.start() for a, b in spans)


def test_unknown_words_map_to_unk(fixture_tokenizer):
    tok = TextTokenizer(fixture_tokenizer, max_tokens=100)
    enc = tok.encode("great zyzzyva film qwertyuiop")
    assert enc.ids.dtype == np.int64
    ids = enc.ids.tolist()
    assert ids[1] == ids[3] == 1
    assert ids[0] == fixture_tokenizer.token_to_id("great") > 1
    assert ids[2] == fixture_tokenizer.token_to_id("film") > 1


def test_empty_text(fixture_tokenizer):
    enc = TextTokenizer(fixture_tokenizer, max_tokens=8).encode("")
    assert enc.num_tokens == 0 and enc.total_tokens == 0 and not enc.truncated
    assert enc.ids.dtype == np.int64


def test_save_load_round_trip(tmp_path, imdb_fixture, fixture_tokenizer):
    path = tmp_path / "tokenizer.json"
    fixture_tokenizer.save(str(path))
    texts = [r.text for r in imdb_fixture.reviews] + ["unseen words &amp; <br /> Tags!"]
    original = TextTokenizer(fixture_tokenizer, max_tokens=40, truncation="head_tail", head_tokens=10)
    loaded = TextTokenizer.from_file(path, max_tokens=40, truncation="head_tail", head_tokens=10)
    assert loaded.vocab_size == original.vocab_size
    for a, b in zip(original.encode_batch(texts), loaded.encode_batch(texts)):
        assert a.ids.tolist() == b.ids.tolist()
        assert a.offsets == b.offsets
        assert (a.total_tokens, a.truncated) == (b.total_tokens, b.truncated)
    # to_str() (what train.py caches and export.py writes) round-trips too
    assert Tokenizer.from_str(fixture_tokenizer.to_str()).encode(texts[0]).ids == fixture_tokenizer.encode(texts[0]).ids


def test_word_pattern_is_what_the_pre_tokenizer_uses(text_tok):
    text = "it's a 10/10 -- can't wait!"
    assert text_tok.tokens(text) == re.findall(WORD_PATTERN, text.lower())


# --- truncation -------------------------------------------------------------------------------------------------

N_WORDS = 25


@pytest.fixture(scope="module")
def numbered():
    """A tokenizer where word wK has a distinct id, so kept ids reveal kept positions."""
    words = [f"w{k}" for k in range(N_WORDS)]
    tok = build_tokenizer([" ".join(words)], max_vocab=100, min_frequency=1)
    text = " ".join(words)
    position_of = {tok.token_to_id(w): k for k, w in enumerate(words)}
    return tok, text, position_of


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("head", list(range(10))),
        ("tail", list(range(N_WORDS - 10, N_WORDS))),
        ("head_tail", [0, 1, 2] + list(range(N_WORDS - 7, N_WORDS))),
    ],
)
def test_truncation_keeps_the_right_positions(numbered, strategy, expected):
    tok, text, position_of = numbered
    tt = TextTokenizer(tok, max_tokens=10, truncation=strategy, head_tokens=3)
    for enc in (
        tt.encode(text),
        tt.encode_batch([text, "w1 w2"])[0],
        TextTokenizer(tok, 10, "head", 3).encode(text, truncation=strategy),
    ):
        assert [position_of[i] for i in enc.ids.tolist()] == expected
        assert enc.truncated and enc.total_tokens == N_WORDS and enc.num_tokens == 10
        assert [text[a:b] for a, b in enc.offsets] == [f"w{k}" for k in expected]


@pytest.mark.parametrize("strategy", ["head", "tail", "head_tail"])
def test_short_texts_are_not_truncated(numbered, strategy):
    tok, _, position_of = numbered
    tt = TextTokenizer(tok, max_tokens=10, truncation=strategy, head_tokens=3)
    for n in (1, 9, 10):
        enc = tt.encode(" ".join(f"w{k}" for k in range(n)))
        assert [position_of[i] for i in enc.ids.tolist()] == list(range(n))
        assert not enc.truncated and enc.total_tokens == n


@pytest.mark.parametrize("strategy", ["head", "tail", "head_tail"])
@pytest.mark.parametrize(("n", "max_tokens", "head"), [(5, 5, 2), (30, 8, 3), (30, 8, 8), (30, 8, 20), (9, 8, 0)])
def test_kept_positions_properties(strategy, n, max_tokens, head):
    keep = kept_positions(n, max_tokens, strategy, head)
    assert len(keep) == min(n, max_tokens)
    assert keep == sorted(set(keep)) and all(0 <= k < n for k in keep)
    if n > max_tokens and (strategy == "tail" or (strategy == "head_tail" and head < max_tokens)):
        assert keep[-1] == n - 1  # the verdict at the end is kept
    if strategy == "head_tail" and n > max_tokens:
        if head >= max_tokens:  # degenerates to "head"
            assert keep == list(range(max_tokens))
        else:
            assert keep[:head] == list(range(head))
    if strategy != "tail" and (strategy == "head" or head > 0):
        assert keep[0] == 0
