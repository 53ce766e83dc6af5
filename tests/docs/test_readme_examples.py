"""Every README example runs against a real `sentiment-serve` on the shipped models (exported/) and answers what the
README shows: same structure, same strings, numbers within a tolerance (docs/readme_examples.py wrote them rounded
to 4 decimals). After a model change: `.venv/bin/python docs/readme_examples.py` rewrites the answers."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_examples", REPO / "docs" / "readme_examples.py")
readme_examples = sys.modules["readme_examples"] = importlib.util.module_from_spec(spec)  # dataclasses need it
spec.loader.exec_module(readme_examples)

TOLERANCE = 2e-3  # rounding to 4 places, plus onnxruntime's differences between machines
EXAMPLES = readme_examples.examples(readme_examples.README.read_text())
# curl lines outside the marked examples need something the test server does not have: a key, a tracing
# collector, a cluster ingress. Anything else must be a marked example.
NEEDS_SETUP = re.compile(r"\$KEY|X-API-Key: a-long|traceparent|Host: ")


def same(shown, actual, where: str = "") -> None:
    if isinstance(shown, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and math.isclose(shown, actual, abs_tol=TOLERANCE), (
            f"{where}: README {shown}, actual {actual}"
        )
    elif isinstance(shown, dict):
        assert isinstance(actual, dict) and set(shown) == set(actual), f"{where}: keys {list(shown)} vs {list(actual)}"
        for key in shown:
            same(shown[key], actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(shown) == len(actual), f"{where}: {shown} vs {actual}"
        for i, (a, b) in enumerate(zip(shown, actual)):
            same(a, b, f"{where}[{i}]")
    else:
        assert shown == actual, f"{where}: README {shown!r}, actual {actual!r}"


@pytest.fixture(scope="module")
def server():
    if not (REPO / "exported").is_dir():
        pytest.skip("no shipped models in exported/")
    with readme_examples.shipped_server() as url, readme_examples.scratch() as workdir:
        yield url, workdir


def test_the_readme_has_examples_with_answers():
    names = {e.name for e in EXAMPLES if e.response is not None}
    assert {"quickstart", "single", "batch", "diagnostics", "cli-jsonl", "cli-csv"} <= names


def test_every_curl_in_the_readme_is_a_checked_example():
    text = readme_examples.README.read_text()
    for example in EXAMPLES:
        text = text.replace(example.command, "")
    commands = text.replace("\\\n", " ").splitlines()  # a command continued over lines is one line
    loose = [line for line in commands if line.lstrip().startswith("curl ") and not NEEDS_SETUP.search(line)]
    assert loose == [], "README curl commands that no test runs: mark them as examples (docs/readme_examples.py)"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_readme_example_answers_what_the_readme_shows(server, example):
    url, workdir = server
    output = readme_examples.run(example, url, workdir)
    assert output.strip(), f"{example.name}: no output"
    if example.response is None:
        return
    shown = readme_examples.values(example.response)
    actual = readme_examples.values(readme_examples.render(output))
    assert len(actual) == len(shown), f"{example.name}: README shows {len(shown)} values, the command printed {len(actual)}"
    for i, (want, got) in enumerate(zip(shown, actual)):
        same(want, got, f"{example.name} value {i + 1}")
