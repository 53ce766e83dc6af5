"""`sentiment-serve`: a failed start is one line naming the file and a non-zero exit; a real start serves over
HTTP and SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from service.server import main


@pytest.fixture
def corrupt_root(serving_root, tmp_path):
    shutil.copytree(serving_root / "gru-uni-meanmax-1", tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps({"not": "the tokenizer"}))
    return tmp_path


def test_bad_artifact_exits_2_with_one_line_naming_the_file(corrupt_root, capsys):
    assert main(["--model-dir", str(corrupt_root), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("sentiment-serve: error: ") and str(corrupt_root / "m" / "tokenizer.json") in err


def test_bad_setting_exits_2(serving_root, capsys, monkeypatch):
    monkeypatch.setenv("SENTIMENT_QUEUE_SIZE", "-3")
    assert main(["--model-dir", str(serving_root)]) == 2
    assert "SENTIMENT_QUEUE_SIZE" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_over_http_and_stops_on_sigterm(serving_root):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.server", "--model-dir", str(serving_root), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
        body = httpx.post(f"{base}/v1/sentiment", json={"text": "great film", "model": "tiny-lstm"}).json()
        assert body["model"]["name"] == "tiny-lstm" and 0 <= body["score"] <= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
