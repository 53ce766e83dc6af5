"""Golden scores of the models we ship: the files' sha256 and P(positive) for fixed texts (to 1e-5), so a change to
tokenization, the runtime or an artifact that moves what users get cannot pass unnoticed.

After an intentional change (a new shipped model), regenerate and review the diff:

    .venv/bin/python tests/service/test_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden.json")
TEXTS = [
    "A wonderful, moving film. The cast is superb.",
    "The acting was wooden and the plot made no sense, but the final twenty minutes were wonderful.",
    "Not bad at all!",
    "Never a dull moment.",
    "This is not a bad film.",
    "I loved the music, the acting and the story.",
    "Dreadful. Two hours I will never get back.",
    "GREAT film<br /><br />I didn&#39;t like   the Ｐｌｏｔ… ok!!",
    "x" * 500,
    "The first half drags, the dialogue is clumsy and the ending is predictable. " * 30,
]


def shipped() -> list[Path]:
    return sorted(p.parent for p in (REPO / "exported").glob("*/manifest.json"))


def measure(directory: Path) -> dict:
    from service.runtime import ModelRuntime

    rt = ModelRuntime(directory, intra_op_threads=1)
    probs = rt.predict(rt.encode(TEXTS))
    return {
        "version": rt.version,
        "sha256": {k: v["sha256"] for k, v in rt.manifest["files"].items()},
        "scores": [round(float(p[rt.positive]), 7) for p in probs],
    }


def test_golden_file_covers_every_shipped_model():
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden["models"]) == sorted(d.name for d in shipped())
    assert golden["texts"] == TEXTS


@pytest.mark.parametrize("directory", shipped(), ids=lambda d: d.name)
def test_shipped_model_matches_its_golden_scores(directory):
    golden = json.loads(GOLDEN.read_text())["models"][directory.name]
    got = measure(directory)
    assert got["version"] == golden["version"]
    assert got["sha256"] == golden["sha256"]
    assert got["scores"] == pytest.approx(golden["scores"], abs=1e-5)


if __name__ == "__main__":
    if "--regenerate" not in sys.argv:
        sys.exit("usage: python tests/service/test_golden.py --regenerate")
    sys.path.insert(0, str(REPO))
    data = {"texts": TEXTS, "models": {d.name: measure(d) for d in shipped()}}
    GOLDEN.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN} for {', '.join(data['models'])}")
