"""The reference the model card compares against: TF-IDF (1-2-grams) + logistic regression, trained on the same
grouped train split and scored on the same validation reviews, with 95% intervals for every accuracy.

    python -m training.baselines --out runs/uni/baseline.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.data import grouped_split, load_labeled


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy (better behaved than the normal one near 0 and 1)."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def tfidf_baseline(data: str, cfg: TrainConfig | None = None) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    cfg = cfg or TrainConfig()
    train, val = grouped_split(load_labeled(data), cfg.val_fraction, cfg.seed)
    vec = TfidfVectorizer(
        ngram_range=(1, 2),
        min_df=2,
        max_features=500_000,
        sublinear_tf=True,
        preprocessor=lambda t: t.replace("<br />", " ").lower(),
    )
    x_train = vec.fit_transform([e.text for e in train])
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, [e.label for e in train])
    pred = clf.predict(vec.transform([e.text for e in val]))
    correct = int(np.sum(pred == np.array([e.label for e in val])))
    low, high = wilson_interval(correct, len(val))
    return {
        "method": "TF-IDF (1-2-grams, sublinear tf) + logistic regression (C=10)",
        "val_accuracy": correct / len(val),
        "interval_95": [round(low, 4), round(high, 4)],
        "val_reviews": len(val),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.baselines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=TrainConfig().data)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = tfidf_baseline(args.data)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
