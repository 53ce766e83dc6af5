"""Faults: a broken artifact stops `sentiment-serve` before it serves anything; an inference error inside one
micro-batch fails only the requests in it; SIGTERM drains in-flight requests, refuses new ones and exits 0 within
the drain timeout; a client that disconnects mid-request gives its queue slots back at once.

(The in-process versions live in tests/service: start-up errors in test_errors.py and test_server.py, a failed
onnxruntime call in test_batching.py, cancelled waiters in test_errors.py. These run against real servers.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.runtime import ModelRuntime

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL = "tiny-lstm"


def metric(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def serve_command() -> list[str]:
    """The installed `sentiment-serve` console script (what the container runs), else the module."""
    script = Path(sys.executable).parent / "sentiment-serve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.server"]


# -- start-up failures ------------------------------------------------------------------------------------------
def _rewrite_tokenizer(artifact: Path, change) -> dict:
    """Edit tokenizer.json's vocabulary; returns the manifest with its new sha256 (so only the mismatch is wrong)."""
    path = artifact / "tokenizer.json"
    data = json.loads(path.read_text())
    change(data["model"]["vocab"])
    path.write_text(json.dumps(data))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return manifest


def _drop_words(vocab: dict) -> None:
    for word in sorted(vocab, key=vocab.get)[-10:]:
        del vocab[word]


def _add_words(vocab: dict) -> None:
    top = max(vocab.values())
    vocab.update({f"zzword{i}": top + 1 + i for i in range(50)})


def _break(kind: str, artifact: Path) -> None:
    if kind == "missing model dir":
        shutil.rmtree(artifact.parent)
    elif kind == "corrupt model.onnx":
        with (artifact / "model.onnx").open("r+b") as fh:
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif kind == "tokenizer does not match the manifest":
        manifest = _rewrite_tokenizer(artifact, _drop_words)
        (artifact / "manifest.json").write_text(json.dumps(manifest))
    elif kind == "tokenizer bigger than the model":  # the manifest agrees with the tokenizer; only the model is short
        manifest = _rewrite_tokenizer(artifact, _add_words)
        manifest["tokenizer"]["vocab_size"] += 50
        manifest["model"]["vocab_size"] += 50
        (artifact / "manifest.json").write_text(json.dumps(manifest))


STARTUP_FAULTS = {  # what was broken -> (file named, phrase) in the one-line error
    "missing model dir": ("models", "does not exist"),
    "corrupt model.onnx": ("model.onnx", "sha256 does not match"),
    "tokenizer does not match the manifest": ("tokenizer.json", "expects"),
    "tokenizer bigger than the model": ("model.onnx", "does not accept this tokenizer's ids"),
}


def test_broken_artifacts_stop_sentiment_serve_with_one_line_and_exit_2(model_root, tmp_path):
    procs = {}
    for i, kind in enumerate(STARTUP_FAULTS):
        artifact = tmp_path / f"case{i}" / "models" / MODEL
        shutil.copytree(model_root / MODEL, artifact)
        _break(kind, artifact)
        # All four start at once: each pays the interpreter's start-up, not one after the other.
        procs[kind] = (
            artifact,
            subprocess.Popen(
                serve_command() + ["--host", "127.0.0.1", "--port", "9", "--model-dir", str(artifact.parent)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    for kind, (artifact, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        fname, phrase = STARTUP_FAULTS[kind]
        assert proc.returncode == 2, (kind, out, err)
        line = err.strip()
        assert "\n" not in line and line.startswith("sentiment-serve: error: "), (kind, err)
        where = artifact.parent if fname == "models" else artifact / fname
        assert str(where) in line and phrase in line, (kind, line)
        assert "Traceback" not in out + err and "Uvicorn running" not in out + err  # never got as far as serving


# -- an inference error inside one micro-batch --------------------------------------------------------------------
MARKER_TOKENS = 40  # normal texts have 2-5 tokens: the planner never puts a 40-token text in their call


def test_an_inference_error_fails_only_its_micro_batch_and_the_server_goes_on(live_server, caplog):
    with live_server(max_wait_ms=20) as srv:
        rt = srv.state.registry.get(None)
        calls = []

        def flaky(encoded):
            lengths = [e.num_tokens for e in encoded]
            calls.append(lengths)
            if MARKER_TOKENS in lengths:
                raise RuntimeError("onnxruntime exploded at /opt/secret/model.onnx")
            return ModelRuntime.run_batch(rt, encoded)

        rt.run_batch = flaky
        marker = " ".join(["boom"] * MARKER_TOKENS)
        texts = ["a great film", "dull and boring", "loved it", "awful acting"] * 6 + [marker] * 4

        async def fire(batch):
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*[c.post("/v1/sentiment", json={"text": t}) for t in batch])

        try:
            responses = asyncio.run(fire(texts))
            for text, response in zip(texts, responses):
                if text == marker:
                    assert response.status_code == 500, response.text
                    assert response.json() == {
                        "error": {"code": "internal_error", "message": "internal server error (logged on the server)"}
                    }
                else:
                    assert response.status_code == 200, response.text
            assert any(MARKER_TOKENS in c for c in calls) and any(len(c) > 1 for c in calls)  # really batched
            assert "exploded" in caplog.text  # logged on the server, with the traceback
            # The worker survived: the same server keeps scoring, markers included once the model is fixed.
            assert all(r.status_code == 200 for r in asyncio.run(fire(texts[:8])))
            del rt.run_batch
            assert all(r.status_code == 200 for r in asyncio.run(fire([marker, "great"])))
            assert httpx.get(f"{srv.url}/readyz").status_code == 200
            assert srv.batcher().running and srv.batcher().depth == 0
        finally:
            rt.__dict__.pop("run_batch", None)


# -- SIGTERM while requests are in flight ----------------------------------------------------------------------------
DRAIN_TIMEOUT_S = 10
SLOW_CALL_S = 2.0


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(model_root, tmp_path, serve_process):
    marks = tmp_path / "marks"
    env = {"SLOW_CALL_S": str(SLOW_CALL_S), "SLOW_MARKS": str(marks), "SENTIMENT_MAX_WAIT_MS": "0"}
    command = [sys.executable, str(HERE / "slow_serve.py")]
    with serve_process("--graceful-timeout", str(DRAIN_TIMEOUT_S), env=env, command=command) as (url, proc):
        plain = [{"text": f"a long and slow review number {i}"} for i in range(6)]
        attribution = [{"text": "a great film with a dull ending", "attribution": True}] * 2

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                tasks = [asyncio.create_task(c.post("/v1/sentiment", json=body)) for body in plain + attribution]
                # In flight = inside the server: every plain text in a (slow) model call or queued behind one, and
                # both diagnostics calls running.
                deadline = time.monotonic() + 30
                while True:
                    seen = marks.read_text().split() if marks.exists() else []
                    in_model = sum(int(n) for word, n in zip(seen, seen[1:]) if word == "batch")
                    depth = metric((await c.get("/metrics")).text, "sentiment_queue_depth", model=MODEL)
                    if in_model + depth == len(plain) and seen.count("diagnose") == len(attribution):
                        break
                    assert time.monotonic() < deadline, (depth, seen)
                    await asyncio.sleep(0.02)
                stopped = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                # New connections are refused (within 2 s) while the old ones are still being answered. A connection
                # the kernel queued in the listen backlog just before the listener closed is dropped unanswered (reset
                # or closed without a response): also a refusal, so the loop stops at the first unanswered request.
                while True:
                    try:
                        async with httpx.AsyncClient(timeout=2) as fresh:
                            await fresh.get(f"{url}/healthz")
                    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                        break
                    assert time.monotonic() - stopped < 2, "still accepting connections 2 s after SIGTERM"
                    await asyncio.sleep(0.02)
                refused_after = time.monotonic() - stopped
                pending = sum(not t.done() for t in tasks)
                assert pending >= 5, f"only {pending} requests were still in flight when new ones were refused"
                print(f"SIGTERM: new connections refused after {refused_after:.2f} s with {pending} requests in flight")
                return stopped, await asyncio.gather(*tasks)

        stopped, responses = asyncio.run(scenario())
        for response in responses:
            assert response.status_code == 200, response.text
            assert 0.0 <= response.json()["score"] <= 1.0
        assert "tokens" in responses[-1].json()["diagnostics"]
        assert proc.wait(timeout=DRAIN_TIMEOUT_S + 5) == 0
        took = time.monotonic() - stopped
        print(f"SIGTERM: all {len(responses)} answered 200, exit 0 after {took:.1f} s (drain timeout {DRAIN_TIMEOUT_S} s)")
        assert took < DRAIN_TIMEOUT_S, f"exit took {took:.1f} s"
        log = proc.stdout.read().decode()
        assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log


# -- a client that disconnects mid-request -----------------------------------------------------------------------
def _raw_post(port: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"POST /v1/sentiment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


@pytest.mark.parametrize("how", ["connection closed", "request cancelled"])
def test_a_client_that_disconnects_gives_its_queue_slots_back(live_server, how):
    gate = threading.Event()
    with live_server(max_wait_ms=0) as srv:
        rt, batcher = srv.state.registry.get(None), srv.batcher()
        scored = []

        def stuck(encoded):  # the model hangs until the gate opens
            gate.wait(30)
            scored.append(len(encoded))
            return ModelRuntime.run_batch(rt, encoded)

        rt.run_batch = stuck

        async def scenario():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                first = asyncio.create_task(c.post("/v1/sentiment", json={"text": "a great film"}))
                while not batcher.in_flight:
                    await asyncio.sleep(0.01)
                if how == "connection closed":  # the client process dies: its sockets close
                    writers = []
                    for i in range(8):
                        _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                        writer.write(_raw_post(srv.port, {"text": f"a dull film {i}"}))
                        await writer.drain()
                        writers.append(writer)
                    leave = [w.close for w in writers]
                else:  # the client gives up (a timeout): httpx drops the connection of a cancelled request
                    tasks = [asyncio.create_task(c.post("/v1/sentiment", json={"text": f"a dull film {i}"})) for i in range(8)]
                    leave = [t.cancel for t in tasks]
                while batcher.depth < 8:
                    await asyncio.sleep(0.01)
                for go in leave:
                    go()
                deadline = time.monotonic() + 5
                while batcher.depth and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                # Back to 0 while the model is still stuck: the slots came back, not the model's work.
                assert batcher.depth == 0
                assert metric((await c.get("/metrics")).text, "sentiment_queue_depth", model=MODEL) == 0
                gate.set()
                assert (await first).status_code == 200
                return await c.get("/metrics")

        try:
            metrics = asyncio.run(scenario()).text
        finally:
            gate.set()
            rt.__dict__.pop("run_batch", None)
        assert scored == [1]  # the eight abandoned texts never reached the model
        assert metric(metrics, "sentiment_requests_total", route="/v1/sentiment", method="POST", status="499") == 8
        assert httpx.post(f"{srv.url}/v1/sentiment", json={"text": "still here"}).status_code == 200
