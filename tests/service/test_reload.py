"""Model hot reload (service/reload.py): a swap under real concurrent load, refused artifacts, the admin route's
guard and SIGHUP on a real `sentiment-serve`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from live_http import live

from service.app import create_app
from service.runtime import ModelRuntime

MODEL = "tiny-lstm"
KEY = "reload-test-key-1"
AUTH = {"X-API-Key": KEY}
TEXT = "A wonderful film, I loved the cast and the ending was great."
CLIENTS = 32
REPO = Path(__file__).resolve().parents[2]


def relabel(src: Path, dest: Path, name: str, version: str) -> Path:
    """A copy of an artifact serving as `name` `version` (the manifest's name and version are not checksummed)."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture
def root(tiny_artifact, tmp_path) -> Path:
    shutil.copytree(tiny_artifact, tmp_path / "models" / MODEL)
    return tmp_path / "models"


@pytest.fixture
def version_two(root, export_random) -> Path:
    """Another network (an untrained GRU, so its scores differ) as tiny-lstm 0.0.2, beside 0.0.1 in the root."""
    return relabel(export_random("gru", False).artifact, root.parent / "staging", MODEL, "0.0.2")


def p_positive(directory: Path) -> float:
    rt = ModelRuntime(directory, intra_op_threads=1, inter_op_threads=1)
    return float(rt.predict(rt.encode([TEXT]))[0, rt.positive])


def test_swap_under_load_drops_nothing_and_each_answer_names_its_version(make_settings, root, version_two):
    expected = {"0.0.1": p_positive(root / MODEL), "0.0.2": p_positive(version_two)}
    assert abs(expected["0.0.1"] - expected["0.0.2"]) > 1e-3  # otherwise the scores could not tell the versions apart
    results: list[tuple[int, str | None, float | None]] = []
    lock, stop = threading.Lock(), threading.Event()
    warmed, after = threading.Event(), threading.Event()
    swapped_at: list[int] = []

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
            while not stop.is_set():
                r = http.post("/v1/sentiment", json={"text": TEXT})
                body = r.json() if r.status_code == 200 else {}
                with lock:
                    results.append((r.status_code, body.get("model", {}).get("version"), body.get("score")))
                    if len(results) >= 4 * CLIENTS:
                        warmed.set()
                    if swapped_at and len(results) >= swapped_at[0] + 4 * CLIENTS:
                        after.set()

    with live(create_app(make_settings(model_root=root, api_keys=[KEY]))) as url:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            assert warmed.wait(60), "the load did not start"
            shutil.move(version_two, root / "tiny-lstm-0.0.2")
            r = httpx.post(f"{url}/v1/admin/reload", json={"directory": str(root / "tiny-lstm-0.0.2")}, headers=AUTH, timeout=60)
            with lock:
                swapped_at.append(len(results))
            assert r.status_code == 200, r.text
            assert r.json()["loaded"] == [
                {
                    "name": MODEL,
                    "version": "0.0.2",
                    "previous_version": "0.0.1",
                    "directory": str((root / "tiny-lstm-0.0.2").resolve()),
                }
            ]
            assert after.wait(60), "no answers after the swap"
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        models = httpx.get(f"{url}/v1/models", headers=AUTH).json()["models"]
        metrics = httpx.get(f"{url}/metrics").text
    statuses = {status for status, _, _ in results}
    assert statuses == {200}, f"failed requests during the swap: {statuses}"
    seen = {version for _, version, _ in results}
    assert seen == {"0.0.1", "0.0.2"}
    for _, version, score in results:  # the version named is the one that scored it
        assert score == pytest.approx(expected[version], abs=1e-6)
    assert results[-1][1] == "0.0.2"
    assert [m["version"] for m in models if m["name"] == MODEL] == ["0.0.2"]
    assert f'sentiment_model_info{{model="{MODEL}",provider="CPUExecutionProvider",version="0.0.2"}} 1.0' in metrics
    assert 'version="0.0.1"' not in metrics
    assert f'sentiment_model_reloads_total{{model="{MODEL}",outcome="loaded"}} 1.0' in metrics


def test_corrupt_artifact_is_refused_and_the_old_version_keeps_serving(make_settings, root, tiny_artifact, caplog):
    with TestClient(create_app(make_settings(model_root=root, api_keys=[KEY]))) as client:
        bad = relabel(tiny_artifact, root / "tiny-lstm-bad", MODEL, "0.0.3")
        data = bytearray((bad / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / "model.onnx").write_bytes(bytes(data))
        with caplog.at_level(logging.ERROR, logger="sentiment.reload"):
            r = client.post("/v1/admin/reload", json={"directory": str(bad)}, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["code"] == "reload_refused"
        assert "sha256 does not match" in r.json()["error"]["message"]
        (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "sentiment.reload"]
        assert line.startswith(f"reload refused {bad.resolve()}:") and "model.onnx: sha256 does not match" in line
        assert line.endswith(f"still serving {MODEL} 0.0.1")
        scored = client.post("/v1/sentiment", json={"text": TEXT}, headers=AUTH).json()
        assert scored["model"]["version"] == "0.0.1"


def test_rescan_refuses_two_directories_for_one_name(make_settings, root, version_two):
    with TestClient(create_app(make_settings(model_root=root, api_keys=[KEY]))) as client:
        shutil.move(version_two, root / "tiny-lstm-0.0.2")
        r = client.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 422 and "claimed by 2 directories" in r.json()["error"]["message"]
        assert client.get("/v1/models", headers=AUTH).json()["models"][0]["version"] == "0.0.1"


def test_admin_route_needs_keys_and_a_key(make_settings, root):
    with TestClient(create_app(make_settings(model_root=root))) as client:
        r = client.post("/v1/admin/reload")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
    with TestClient(create_app(make_settings(model_root=root, api_keys=[KEY]))) as client:
        assert client.post("/v1/admin/reload").status_code == 401
        r = client.post("/v1/admin/reload", json={"directory": "/etc"}, headers=AUTH)
        assert r.status_code == 422 and "not inside the model root" in r.json()["error"]["message"]
        r = client.post("/v1/admin/reload", headers=AUTH)  # nothing changed
        assert r.status_code == 200 and r.json() == {"loaded": [], "unchanged": [{"name": MODEL, "version": "0.0.1"}]}


def test_sighup_adds_a_new_model_to_a_running_server(root, export_random, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.server", "--port", str(port), "--model-dir", str(root), "--log-level", "info"],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SENTIMENT_INTRA_OP_THREADS": "1"},
        )
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, proc)
        relabel(export_random("gru", False).artifact, root / "gru-new", "gru-new", "1.0.0")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "gru-new" in {m["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]}, proc)
        r = httpx.post(f"{url}/v1/sentiment", json={"text": TEXT, "model": "gru-new"})
        assert r.status_code == 200 and r.json()["model"] == {"name": "gru-new", "version": "1.0.0"}
        assert proc.poll() is None  # SIGHUP did not stop it
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "reload: serving gru-new 1.0.0" in log_path.read_text()


def wait_for(check, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Polls a server that gives no event to wait on (another process)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.1)
