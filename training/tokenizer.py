"""Builds the word-level `tokenizer.json` (HF `tokenizers`): cleaning lives in its normalizer so training and
serving clean text identically; [PAD]=0 and [UNK]=1."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from service.tokenization import PAD, UNK

# Review text comes scraped from HTML: line breaks as <br />, stray tags, entities.
_ENTITIES = {"&amp;": "&", "&quot;": '"', "&#39;": "'", "&#039;": "'", "&apos;": "'", "&lt;": "<", "&gt;": ">", "&nbsp;": " "}
# Bounded whitespace, not `\s*`: the unbounded form backtracks quadratically ("<br" + 20,000 spaces took 0.7 s to
# clean, blocking everything else); real markup never has more than a few spaces inside a tag.
BR_PATTERN = r"<\s{0,8}br\s{0,8}/?\s{0,8}>"
# A word keeps inner apostrophes ("don't" is one token, its sentiment is not "don" + "t"); every other
# non-space character is a token of its own, so "!!!" and ":)" still count.
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(BR_PATTERN), " "), normalizers.Replace(Regex(r"</?[a-zA-Z][^<>]{0,40}>"), " ")]
        + [normalizers.Replace(k, v) for k, v in _ENTITIES.items()]
        + [normalizers.NFKC(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    return tok


def build_tokenizer(texts: Iterable[str], max_vocab: int, min_frequency: int) -> Tokenizer:
    tok = new_tokenizer()
    trainer = WordLevelTrainer(vocab_size=max_vocab, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
