"""The README's examples, run for real: every response shown in README.md is what the shipped models answer.

    .venv/bin/python docs/readme_examples.py            # rewrite the responses in README.md (after a model change)
    .venv/bin/python docs/readme_examples.py --check    # exit 1 and name the examples whose answer changed

An example is a fenced `bash` block after `<!-- example: NAME -->`; its response, if the README shows one, is the
fenced block between `<!-- response: NAME -->` and `<!-- /response -->`. Each command runs in bash, in a scratch
folder holding links to `.venv`, `examples/` and `exported/`, against a `sentiment-serve` on the shipped models
(`localhost:8000` in a command becomes that server's address). Each JSON value printed is shown rounded to 4
decimals, long lists cut to their first 3 items and a "... N more" marker (`shown`), one per line or indented when
it is the only one; tests/docs/test_readme_examples.py runs the same commands and compares, numbers within a
tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LINKED = (".venv", "examples", "exported")  # what the commands may name, linked into their scratch folder
DECIMALS, LIST_ITEMS = 4, 3
EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w-]+) -->\n```bash\n(?P<command>.*?)```\n"
    r"(?:<!-- response: (?P=name) -->\n```(?P<lang>\w+)\n(?P<response>.*?)```\n<!-- /response -->\n)?",
    re.S,
)


@dataclass
class Example:
    name: str
    command: str
    response: str | None  # None: the README shows no answer; the command must still succeed
    lang: str = "json"
    span: tuple[int, int] = (0, 0)  # the response's text in the README


def examples(text: str) -> list[Example]:
    found = [
        Example(m["name"], m["command"], m["response"], m["lang"] or "json", m.span("response")) for m in EXAMPLE.finditer(text)
    ]
    names = [e.name for e in found]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"README examples named twice: {sorted(duplicated)}")
    return found


def shown(value):
    """A JSON value as the README shows it: floats to DECIMALS places, lists past LIST_ITEMS cut with a marker."""
    if isinstance(value, float):
        return round(value, DECIMALS)
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        head = [shown(v) for v in value[:LIST_ITEMS]]
        return head + [f"... {len(value) - LIST_ITEMS} more"] if len(value) > LIST_ITEMS else head
    return value


def values(output: str) -> list:
    """The JSON values an output holds, in order (curl prints them without newlines between), and its non-JSON
    lines as strings."""
    decoder, found, i = json.JSONDecoder(), [], 0
    while i < len(output):
        if output[i].isspace():
            i += 1
            continue
        try:
            value, i = decoder.raw_decode(output, i)
            found.append(value)
        except ValueError:
            end = output.find("\n", i)
            end = len(output) if end < 0 else end
            found.append(output[i:end].rstrip())
            i = end
    return found


def render(output: str) -> str:
    """Command output as shown: each JSON value rounded and cut, on one line (indented when it is the only one)."""
    found = values(output)
    indent = 2 if len(found) == 1 and isinstance(found[0], (dict, list)) else None
    return "\n".join(v if isinstance(v, str) else json.dumps(shown(v), ensure_ascii=False, indent=indent) for v in found) + "\n"


def run(example: Example, base_url: str, workdir: Path) -> str:
    command = example.command.replace("localhost:8000", base_url.removeprefix("http://"))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"README example {example.name!r} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        for name in LINKED:
            os.symlink(REPO / name, Path(tmp) / name)
        yield Path(tmp)


@contextmanager
def shipped_server(model_root: Path = REPO / "exported") -> Iterator[str]:
    """`sentiment-serve` (one worker) on the shipped models and a free port; its URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SENTIMENT_WORKERS": "1"}
    for name in ("SENTIMENT_API_KEYS", "SENTIMENT_MODEL_ROOT", "SENTIMENT_DEFAULT_MODEL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.server", "--port", str(port), "--model-dir", str(model_root), "--log-level", "warning"],
        cwd=REPO,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sentiment-serve on {model_root} did not become ready (exit {proc.poll()})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if an answer differs")
    args = parser.parse_args(argv)
    text = README.read_text()
    found = examples(text)
    changed = []
    with shipped_server() as url, scratch() as workdir:
        answers = {e.name: render(run(e, url, workdir)) for e in found}
    # Replace from the end, so earlier spans stay valid.
    for example in sorted(found, key=lambda e: e.span[0], reverse=True):
        if example.response is not None and example.response != answers[example.name]:
            changed.append(example.name)
            start, end = example.span
            text = text[:start] + answers[example.name] + text[end:]
    if args.check:
        print(f"{len(found)} examples; changed: {', '.join(reversed(changed)) or 'none'}")
        return 1 if changed else 0
    README.write_text(text)
    print(f"{len(found)} examples run; {len(changed)} response(s) rewritten: {', '.join(reversed(changed)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
