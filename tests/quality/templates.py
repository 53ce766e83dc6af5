"""The probe suite's source: CheckList-style minimum-functionality tests (Ribeiro et al. 2020) built from templates x
fillers, plus hand-written one-liners. `probes.jsonl` is generated from this file and checked against it by
tests/quality/test_probes.py, so edit here and regenerate:

    .venv/bin/python -m tests.quality.templates          # rewrites tests/quality/probes.jsonl

Every probe is short, plain English with one label a careful reader would give it: no sarcasm, no mixed verdicts
(in `contrast` the clause after "but" / the main clause is an overall verdict, not one more aspect).
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

PROBES_FILE = Path(__file__).with_name("probes.jsonl")
LABELS = ("negative", "positive")

# What each category tests. negated_positive / negated_negative hold one label each by construction (a negated
# positive is negative); they are balanced as a pair, every other category within itself.
CATEGORIES = {
    "negated_positive": "a positive word or phrase under negation reads negative (not good, not worth it)",
    "negated_negative": "a negative word or phrase under negation reads positive (not bad, never boring)",
    "contrast": "'X, but Y' / 'although X, Y': the overall verdict in Y decides, whichever way X points",
    "intensifiers": "an intensified sentiment word keeps its polarity (really great, absolutely terrible)",
    "plain": "short, unambiguous movie-review one-liners",
    "product_service": "short product and service reviews, outside the movie domain",
}
SINGLE_LABEL = {"negated_positive": "negative", "negated_negative": "positive"}


def _probe(category: str, label: str, text: str) -> dict:
    return {"category": category, "label": label, "text": text}


def _negated_positive() -> list[dict]:
    c, lab = "negated_positive", "negative"
    out = [
        _probe(c, lab, f"The {noun} was not {adj}.")
        for noun, adj in product(["movie", "acting", "story", "ending"], ["good", "funny", "interesting"])
    ]
    out += [
        _probe(c, lab, f"This film is not worth {what}.") for what in ["watching", "your time", "the ticket price", "the hype"]
    ]
    out += [_probe(c, lab, f"I did not {verb} it.") for verb in ["enjoy", "like", "care for"]]
    out += [_probe(c, lab, f"I didn't {verb} this movie at all.") for verb in ["enjoy", "like"]]
    out += [
        _probe(c, lab, text)
        for text in [
            "Not good.",
            "Not worth it.",
            "Not recommended.",
            "Not funny at all.",
            "I can't recommend this film.",
            "I would not recommend it to anyone.",
            "I wouldn't watch it again.",
            "The jokes were never funny.",
            "Nothing about this movie works.",
            "None of the characters are likeable.",
            "It isn't a good film.",
            "The plot doesn't make any sense.",
            "I was not impressed.",
            "The cast is not convincing.",
            "This is not a movie I will remember fondly.",
            "The film is not good enough to recommend.",
            "There is nothing to enjoy here.",
            "The story never becomes interesting.",
            "No one in the cast gives a good performance.",
            "It is not entertaining in the slightest.",
        ]
    ]
    return out


def _negated_negative() -> list[dict]:
    c, lab = "negated_negative", "positive"
    out = [
        _probe(c, lab, f"The {noun} was never {adj}.")
        for noun, adj in product(["movie", "story", "plot"], ["boring", "dull", "predictable"])
    ]
    out += [_probe(c, lab, f"The {noun} was not bad at all.") for noun in ["movie", "acting", "ending"]]
    out += [
        _probe(c, lab, text)
        for text in [
            "Not bad at all!",
            "I did not find a single scene boring.",
            "This is not a bad film.",
            "Never boring.",
            "Never a dull moment.",
            "There was never a dull moment.",
            "I didn't hate it.",
            "Can't complain.",
            "I can't complain about anything.",
            "No complaints at all.",
            "I have no complaints about this film.",
            "This film does not disappoint.",
            "It never disappoints.",
            "You won't be disappointed.",
            "I was not disappointed.",
            "I didn't regret watching it for a second.",
            "Not a single boring scene.",
            "There is nothing wrong with this movie.",
            "I couldn't find a single flaw.",
            "The ending is not predictable at all.",
            "Not once was I bored.",
            "The two hours never felt long.",
            "It never feels slow.",
            "I don't have a bad word to say about it.",
            "Not a weak performance in the whole cast.",
            "It's not a waste of time at all.",
            "I was not bored for a second.",
            "Nobody in the cast gives a bad performance.",
            "I never once looked at my watch.",
        ]
    ]
    return out


def _contrast() -> list[dict]:
    c = "contrast"
    # A small flaw (or merit), then the overall verdict that decides the label.
    flaws = [
        "The opening is slow",
        "The acting is a little wooden",
        "The special effects look cheap",
        "The running time is long",
        "The soundtrack is forgettable",
    ]
    praise = [
        "but I loved the film",
        "but overall it is a wonderful movie",
        "but the story more than makes up for it",
        "but I would happily watch it again",
    ]
    merits = [
        "The cast looks great",
        "The music is lovely",
        "The first scene is promising",
        "The costumes are beautiful",
        "The premise is clever",
    ]
    verdicts = [
        "but the film is a dull mess",
        "but overall it is a waste of time",
        "but I was bored from start to finish",
        "but I would not watch it again",
    ]
    out = [_probe(c, "positive", f"{x}, {y}.") for x, y in product(flaws, praise)]
    out += [_probe(c, "negative", f"{x}, {y}.") for x, y in product(merits, verdicts)]
    # Concession first, verdict in the main clause.
    out += [
        _probe(c, "positive", text)
        for text in [
            "Although the start is slow, it becomes a wonderful film.",
            "Despite a weak first act, this is a great movie.",
            "The acting was wooden, but the story was wonderful and I loved it.",
            "It has a few flaws, but it is still one of my favorite films.",
        ]
    ]
    out += [
        _probe(c, "negative", text)
        for text in [
            "Although the actors try hard, the film is a boring mess.",
            "Despite a great cast, this is a terrible movie.",
            "The story was wonderful, but the acting was so wooden that it ruined the film.",
            "It has a couple of good scenes, but it is still one of the worst films I have seen.",
        ]
    ]
    return out


def _intensifiers() -> list[dict]:
    c = "intensifiers"
    # Pairs chosen so that each intensifier reads naturally with both of its words.
    pairs = {
        "really": (["great", "good"], ["bad", "boring"]),
        "absolutely": (["wonderful", "brilliant"], ["terrible", "awful"]),
        "extremely": (["entertaining", "funny"], ["boring", "disappointing"]),
        "incredibly": (["moving", "well made"], ["dull", "tedious"]),
        "truly": (["beautiful", "excellent"], ["awful", "dreadful"]),
    }
    out = []
    for intens, (pos, neg) in pairs.items():
        for label, words in (("positive", pos), ("negative", neg)):
            out += [_probe(c, label, f"This movie is {intens} {word}.") for word in words]
            out += [_probe(c, label, f"The {noun} was {intens} {word}.") for noun, word in zip(["film", "show"], words)]
    out += [
        _probe(c, "positive", text)
        for text in [
            "One of the best films I have ever seen.",
            "Easily the funniest movie of the year.",
        ]
    ]
    out += [
        _probe(c, "negative", text)
        for text in [
            "One of the worst films I have ever seen.",
            "Easily the most boring movie of the year.",
        ]
    ]
    return out


def _plain() -> list[dict]:
    c = "plain"
    pos = [
        "A wonderful, moving film.",
        "Loved every minute.",
        "A beautiful and touching story.",
        "The cast is superb.",
        "Funny, smart and full of heart.",
        "A must see.",
        "I enjoyed it from start to finish.",
        "Great acting and a gripping plot.",
        "A delightful family movie.",
        "The best thriller I have seen in years.",
        "Charming, witty and beautifully shot.",
        "I laughed all the way through.",
        "A masterpiece.",
        "Highly recommended.",
        "What a fantastic film!",
        "The performances are excellent.",
        "A smart, thrilling ride.",
        "I would watch it again tomorrow.",
        "Brilliant writing and a lovely score.",
        "Ten out of ten.",
    ]
    neg = [
        "Dull and far too long.",
        "A complete waste of time.",
        "Terrible acting and a silly plot.",
        "I hated every minute.",
        "Boring, slow and predictable.",
        "The worst movie I have seen this year.",
        "Avoid this one.",
        "A mess from beginning to end.",
        "I walked out halfway through.",
        "The dialogue is awful.",
        "Painfully unfunny.",
        "A lazy, forgettable sequel.",
        "Two hours of my life I will never get back.",
        "The script is a disaster.",
        "What a terrible film!",
        "I fell asleep after twenty minutes.",
        "Poorly written and badly acted.",
        "A tedious, pointless movie.",
        "The ending ruined it.",
        "One out of ten.",
    ]
    return [_probe(c, "positive", t) for t in pos] + [_probe(c, "negative", t) for t in neg]


def _product_service() -> list[dict]:
    c = "product_service"
    pos = [
        "Works perfectly, great value.",
        "Arrived quickly and works exactly as described.",
        "Excellent quality, I would buy it again.",
        "The staff were friendly and helpful.",
        "Great service and delicious food.",
        "Fast delivery and the product is great.",
        "Customer support solved my problem in minutes.",
        "Very comfortable and well made.",
        "The battery lasts for days. Love it.",
        "Best purchase I have made this year.",
        "Easy to set up and works great.",
        "The hotel room was clean and the view was lovely.",
        "Five stars, highly recommend this seller.",
        "Sturdy, reliable and worth every penny.",
        "The app is fast and easy to use.",
        "Our waiter was wonderful and the meal was excellent.",
        "Exactly what I needed, thank you!",
        "The replacement arrived the next day. Great support.",
        "Sounds amazing for the price.",
        "Very happy with this purchase.",
    ]
    neg = [
        "Arrived broken and support never answered.",
        "Stopped working after two days.",
        "Cheap material, it fell apart in a week.",
        "The staff were rude and unhelpful.",
        "Cold food and terrible service.",
        "Delivery took a month and the box was damaged.",
        "Customer support kept me on hold for an hour and fixed nothing.",
        "Very uncomfortable and badly made.",
        "The battery dies after an hour. Useless.",
        "Worst purchase I have made this year.",
        "Impossible to set up and the instructions are useless.",
        "The hotel room was dirty and smelled awful.",
        "One star, avoid this seller.",
        "Flimsy, unreliable and a waste of money.",
        "The app crashes every time I open it.",
        "Our waiter ignored us and the meal was bland.",
        "Not what I ordered, and no refund.",
        "I returned it the same day.",
        "Sounds terrible and the volume button broke.",
        "Very disappointed with this purchase.",
    ]
    return [_probe(c, "positive", t) for t in pos] + [_probe(c, "negative", t) for t in neg]


def build() -> list[dict]:
    """Every probe, in a fixed order: category by category as in CATEGORIES."""
    return _negated_positive() + _negated_negative() + _contrast() + _intensifiers() + _plain() + _product_service()


def write(path: Path = PROBES_FILE) -> int:
    probes = build()
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in probes), encoding="utf-8")
    return len(probes)


if __name__ == "__main__":
    print(f"wrote {write()} probes to {PROBES_FILE}")
