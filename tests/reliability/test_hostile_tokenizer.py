"""Hostile text against the tokenizer: cleaning and splitting take time linear in the input for every adversarial
pattern tried, in the tokenizer training builds (`training.tokenizer.new_tokenizer`) and in every shipped
`exported/*/tokenizer.json`.

The adversarial inputs come from the patterns the tokenizer itself holds (every `Replace` of its normalizer, every
`Split` of its pre-tokenizer): each proper prefix of a pattern's literal skeleton, repeated, or followed by a long
run of spaces or letters ("<br" + " " * n + "x", "<" + "a" * n, "&am" * n), plus apostrophe chains for the word
pattern. Each is timed at five sizes (best of several runs, so a busy machine does not fake a slope) and the
exponent of time against size is fitted on a log-log scale: 1 is linear, 2 quadratic. The old `<\\s*br\\s*/?\\s*>`
pattern fitted ~2 ("<br" + 20,000 spaces took 0.7 s).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
SIZES = (1_000, 2_000, 4_000, 8_000, 16_000)  # characters (the service's default limit is 20,000)
MAX_EXPONENT = 1.2
QUANTIFIER = r"(?:\{\d*,?\d*\}|[*+?])?"


def skeletons(regex: str) -> list[str]:
    """The shortest literal texts a (simple) regex matches, one per top-level alternative, with one representative
    character per class: the `<br>` pattern gives "<br/>", the tag pattern "</ax>", the word pattern "a'a" and "x"."""
    s = re.sub(r"\\s" + QUANTIFIER, "", regex)  # whitespace atoms: the padding variants add them back, long
    s = re.sub(r"\[\^[^\]]*\]" + QUANTIFIER, "x", s)  # a negated class: any other character
    s = re.sub(r"\[([^\]\\])[^\]]*\]" + QUANTIFIER, r"\1", s)  # a class: its first character
    s = re.sub(r"\\w" + QUANTIFIER, "a", s)
    s = s.replace("(?:", "(")
    s = re.sub(r"[()?*+]", "", s)
    return [part.replace("\\", "") for part in s.split("|") if part]


def patterns(data: dict) -> list[str]:
    """Literal skeletons of every pattern in a tokenizer.json's normalizer and pre-tokenizer."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, dict):
                found.extend([pattern["String"]] if "String" in pattern else skeletons(pattern["Regex"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk([data.get("normalizer"), data.get("pre_tokenizer")])
    return sorted(set(found))


def adversarial(literals: list[str]) -> dict:
    """name -> (n -> a text of about n characters): every prefix of every literal, repeated or followed by a long
    run of spaces or letters, and apostrophe chains for the word pattern."""
    cases = {
        "apostrophe chain a'a'...": lambda n: "a'" * (n // 2),
        "apostrophes only": lambda n: "'" * n,
        "a + apostrophes + a": lambda n: "a" + "'" * n + "a",
        "spaces only": lambda n: " " * n,
    }
    prefixes = sorted({literal[:k] for literal in literals for k in range(1, len(literal) + 1)})
    for p in prefixes:
        cases[f"{p!r} repeated"] = lambda n, p=p: p * (n // len(p))
        cases[f"{p!r} + spaces + x"] = lambda n, p=p: p + " " * n + "x"
        cases[f"{p!r} + letters"] = lambda n, p=p: p + "a" * n
    return cases


def exponent(tok: Tokenizer, make, rounds: int = 3) -> tuple[float, list[float]]:
    """Fitted exponent of tokenizing time against length, and the times. CPU time of this thread, not wall time,
    and the best of `rounds` passes over all sizes in turn: a busy machine then neither inflates one size nor
    bends the curve (wall-clock minima on the shared 2-core machine still varied 2-3x)."""
    texts = [make(n) for n in SIZES]
    best = [float("inf")] * len(texts)
    for _ in range(rounds):
        for i, text in enumerate(texts):
            start = time.thread_time()
            tok.encode(text, add_special_tokens=False)
            best[i] = min(best[i], time.thread_time() - start)
    best = [max(t, 1e-6) for t in best]
    slope = np.polyfit(np.log([len(t) for t in texts]), np.log(best), 1)[0]
    return float(slope), best


def _cleaning_configs() -> dict[str, Tokenizer]:
    """One tokenizer per distinct normalizer + pre-tokenizer, named after every tokenizer that has it (the shipped
    ones normally share training's, and the vocabulary does not change the cleaning)."""
    from training.tokenizer import build_tokenizer  # new_tokenizer() plus a vocabulary, so it can encode

    found = {"training.tokenizer.new_tokenizer()": build_tokenizer(["a great film, isn't it?"], 100, 1)}
    for path in sorted((REPO / "exported").glob("*/tokenizer.json")):
        found[str(path.relative_to(REPO))] = Tokenizer.from_file(str(path))
    groups: dict[str, list[str]] = {}
    for name, tok in found.items():
        data = json.loads(tok.to_str())
        groups.setdefault(json.dumps([data.get("normalizer"), data.get("pre_tokenizer")]), []).append(name)
    return {" = ".join(names): found[names[0]] for names in groups.values()}


CONFIGS = _cleaning_configs()


def test_the_fuzzer_knows_the_shipped_patterns():
    assert skeletons(r"<\s{0,8}br\s{0,8}/?\s{0,8}>") == ["<br/>"]
    assert skeletons(r"<\s*br\s*/?\s*>") == ["<br/>"]
    assert skeletons(r"</?[a-zA-Z][^<>]{0,40}>") == ["</ax>"]
    assert skeletons(r"\w+(?:'\w+)*|[^\w\s]") == ["a'a", "x"]
    assert any("exported/" in name for name in CONFIGS)  # at least one shipped model is fuzzed


def test_the_fuzzer_catches_the_old_quadratic_br_pattern():
    from tokenizers import Regex, normalizers

    tok = Tokenizer.from_str(next(iter(CONFIGS.values())).to_str())
    tok.normalizer = normalizers.Replace(Regex(r"<\s*br\s*/?\s*>"), " ")
    slope, _ = exponent(tok, adversarial(["<br/>"])["'<br' + spaces + x"])
    assert slope > 1.6


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tokenizing_is_linear_for_every_adversarial_pattern(name):
    tok = CONFIGS[name]
    literals = patterns(json.loads(tok.to_str()))
    assert "<br/>" in literals and "&amp;" in literals and "a'a" in literals, literals  # what we mean to test
    slow = {}
    for case, make in adversarial(literals).items():
        slope, times = exponent(tok, make)
        if slope > MAX_EXPONENT:  # one more try before calling it: a burst of load can still bend one curve
            slope, times = exponent(tok, make, rounds=5)
        if slope > MAX_EXPONENT:
            slow[case] = f"exponent {slope:.2f}, {' / '.join(f'{t * 1e3:.2f}' for t in times)} ms"
    assert not slow, f"{name}: super-linear tokenization (sizes {SIZES}): {slow}"
