"""Security: API keys on every scoring route, compared in constant time and never logged; no stack traces or file
paths in any response; body size limits enforced before the body is read; CORS closed unless configured; the
container's hardening declared where the image and the compose file are built.

The running container's non-root user and read-only root filesystem are checked end to end by
tests/container/run.sh (`make test-container`, needs podman); the static check here keeps the declarations from
drifting in every `make test`.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service import auth as auth_module
from service.app import create_app
from service.routes import require_api_key
from service.routes.admin import require_admin

REPO = Path(__file__).resolve().parents[2]
KEYS = ["first-key-0123456789", "second-key-9876543210"]
WRONG = "wrong-key-5555555555"
# Routes anyone may call: probes, metrics and the API docs. Any other route must need a key.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
BODIES = {"/v1/sentiment": {"text": "great"}, "/v1/sentiment/batch": {"items": [{"text": "great"}]}}


@pytest.fixture(scope="module")
def keyed(make_settings):
    with TestClient(create_app(make_settings(api_keys=KEYS))) as c:
        yield c


def api_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every operation the app publishes (its OpenAPI schema)."""
    return [(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops]


# -- API keys -----------------------------------------------------------------------------------------------------
KEY_CHECKS = {require_api_key, require_admin}
# Keyless on purpose, like /healthz and /readyz: the Open Inference Protocol's server metadata and health probes.
PUBLIC_PROTOCOL = {
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
}
V2_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]}
KEYED_BODIES = {
    **BODIES,
    "/predict": {"inputs": "great"},
    "/": {"inputs": "great"},
    "/v2/models/{name}/infer": V2_BODY,
    "/v2/models/{name}/versions/{version}/infer": V2_BODY,
}


def _needs_key(route: APIRoute, router_dependencies: list) -> bool:
    def walk(dependant) -> bool:
        return any(d.call in KEY_CHECKS or walk(d) for d in dependant.dependencies)

    return any(d.dependency in KEY_CHECKS for d in [*router_dependencies, *route.dependencies]) or walk(route.dependant)


def keyed_routes(app) -> tuple[list[tuple[str, str]], set[str]]:
    """((method, path) of every API route whose dependencies check the key, paths of those that do not), read from
    the routes and their routers (a route left out of OpenAPI, like TEI's POST /, counts too)."""
    found = []  # (route, its router's dependencies)
    for entry in app.routes:
        router = getattr(entry, "original_router", None)  # an included router (FastAPI keeps the original)
        if router is not None:
            found += [(r, router.dependencies) for r in router.routes if isinstance(r, APIRoute)]
        elif isinstance(entry, APIRoute):
            found.append((entry, []))
    guarded = [(m, r.path) for r, deps in found if _needs_key(r, deps) for m in sorted(r.methods)]
    return guarded, {r.path for r, deps in found if not _needs_key(r, deps)}


def test_every_route_but_the_public_ones_needs_a_key(keyed):
    guarded, public = keyed_routes(keyed.app)
    assert public <= PUBLIC | PUBLIC_PROTOCOL, public - PUBLIC - PUBLIC_PROTOCOL
    assert {p for _, p in guarded} >= {
        "/v1/sentiment",
        "/v1/sentiment/batch",
        "/v1/models",
        "/v1/admin/reload",
        "/v2/models/{name}/infer",
        "/predict",
        "/",
    }
    rt = keyed.app.state.service.registry.get(None)  # the one model under the test root
    model, version = rt.name, rt.version
    for method, template in guarded:
        path = template.format(name=model, version=version)

        def call(method=method, path=path, template=template, **headers):
            return keyed.request(method, path, json=KEYED_BODIES.get(template), headers=headers)

        for response, code in (
            (call(), "missing_api_key"),
            (call(**{"x-api-key": WRONG}), "invalid_api_key"),
            (call(authorization=f"Bearer {WRONG}"), "invalid_api_key"),
            (call(authorization=f"Basic {KEYS[0]}"), "missing_api_key"),
            (call(**{"x-api-key": KEYS[0][:-1]}), "invalid_api_key"),
            (call(**{"x-api-key": KEYS[0] + "x"}), "invalid_api_key"),
        ):
            assert response.status_code == 401, (method, path, response.text)
            error = response.json()["error"]  # the protocol routes answer in their protocol's shape
            assert (error["code"] == code) if isinstance(error, dict) else error, (path, error)
            assert response.headers["www-authenticate"] == "Bearer"
            assert WRONG not in response.text and KEYS[0] not in response.text
        assert call(**{"x-api-key": KEYS[1]}).status_code == 200, (method, path)
        assert call(authorization=f"Bearer {KEYS[0]}").status_code == 200, (method, path)
    for path in ("/healthz", "/readyz", "/metrics", *(p.format(name=model, version=version) for p in PUBLIC_PROTOCOL)):
        assert keyed.get(path).status_code == 200, path


def test_keys_are_compared_in_constant_time_against_every_key(keyed, monkeypatch):
    calls = []
    real = auth_module.hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    for presented, status in ((WRONG, 401), (KEYS[0], 200), (KEYS[1], 200), ("x" * 4096, 401)):
        calls.clear()
        response = keyed.post("/v1/sentiment", json={"text": "great"}, headers={"x-api-key": presented})
        assert response.status_code == status
        # hmac.compare_digest on bytes, once per configured key, whichever matched: no early exit to time.
        assert calls == [(bytes, bytes, len(key)) for key in KEYS]


def test_keys_never_reach_the_logs(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    with live_server(api_keys=KEYS) as srv:
        rt = srv.state.registry.get(None)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            good, bad = {"x-api-key": KEYS[0]}, {"authorization": f"Bearer {WRONG}"}
            assert c.post("/v1/sentiment", json={"text": "great"}, headers=good).status_code == 200
            assert c.post("/v1/sentiment", json={"text": "great"}, headers=bad).status_code == 401
            assert c.post("/v1/sentiment", json={"text": ""}, headers=good).status_code == 422
            rt.run_batch = lambda enc: 1 / 0  # an unexpected error: logged with its traceback
            try:
                assert c.post("/v1/sentiment", json={"text": "great"}, headers=good).status_code == 500
            finally:
                del rt.run_batch
    assert "ZeroDivisionError" in caplog.text  # the log was captured
    for key in (*KEYS, WRONG):
        assert key not in caplog.text


def test_keys_never_reach_the_server_output_even_at_debug_level(serve_process):
    env = {"SENTIMENT_API_KEYS": ",".join(KEYS)}
    with serve_process("--log-level", "debug", env=env) as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as c:
            for headers in ({"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"}, {"x-api-key": WRONG}):
                c.post("/v1/sentiment", json={"text": "great"}, headers=headers)
                c.get("/v1/models", headers=headers)
        proc.terminate()
        output = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0
    assert "Application startup complete" in output  # debug output was there to search
    for key in (*KEYS, WRONG):
        assert key not in output


# -- what responses reveal -------------------------------------------------------------------------------------------
LEAKS = re.compile(r'Traceback|File "|\.py\b|site-packages|/opt/secret|/tmp/|/home/|/root/|/work/')


def test_no_stack_traces_or_file_paths_in_any_error_response(make_settings, model_root):
    secret = 'Traceback (most recent call last):\n  File "/opt/secret/service.py", line 1\nRuntimeError: /opt/secret'
    responses = []
    with TestClient(create_app(make_settings(max_text_chars=100, max_body_bytes=5000)), raise_server_exceptions=False) as c:
        rt = c.app.state.service.registry.get(None)
        rt.run_batch = lambda enc: (_ for _ in ()).throw(RuntimeError(secret))
        responses += [
            c.post("/v1/sentiment", json={"text": "great"}),  # 500
            c.post("/v1/sentiment/batch", json={"items": [{"text": "great"}]}),  # 500
            c.get("/readyz"),
        ]  # 503: the probe's inference failed
        del rt.run_batch
        responses += [
            c.get("/v1/nothing"),
            c.get("/v1/sentiment"),
            c.delete("/v1/models"),  # 404, 405, 405
            c.post("/v1/sentiment", json={"text": "a" * 101}),  # 413 text
            c.post("/v1/sentiment", content=b"x" * 6000),  # 413 body
            c.post("/v1/sentiment", content=b'{"text": ', headers={"content-type": "application/json"}),
            c.post("/v1/sentiment", content=b'{"text": "\xff"}', headers={"content-type": "application/json"}),
            c.post("/v1/sentiment", json={"text": "great", "model": str(model_root)}),  # 404 model
            c.post("/v1/sentiment", json={"text": ["great"]}),
        ]  # 422
    with TestClient(create_app(make_settings())) as never_started:  # lifespan runs, then we check not-ready
        never_started.app.state.service.ready = False
        responses.append(never_started.post("/v1/sentiment", json={"text": "great"}))
    statuses = [r.status_code for r in responses]
    assert statuses == [500, 500, 503, 404, 405, 405, 413, 413, 422, 422, 404, 422, 503]
    for response in responses:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        message = body["error"]["message"].replace(str(model_root), "<the requested name>")
        assert not LEAKS.search(message), (response.status_code, message)
        assert "secret" not in response.text


# -- size limits before parsing --------------------------------------------------------------------------------------
def _exchange(port: int, head: bytes, chunks: list[bytes] = (), wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        data, deadline = b"", time.monotonic() + wait
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def test_oversized_bodies_are_refused_before_they_are_read(live_server):
    with live_server(max_body_bytes=1000) as srv:
        # A declared 10 MB body, never sent: the answer comes anyway, so nothing waited for (or parsed) the body.
        start = time.monotonic()
        head = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
        reply = _exchange(srv.port, head)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"connection: close" in reply.lower()
        assert time.monotonic() - start < 2
        # A chunked body with no length: counted as it arrives and cut off at the limit (the stream never ends).
        head = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"320\r\n" + b"x" * 800 + b"\r\n"
        assert _exchange(srv.port, head, [chunk, chunk]).startswith(b"HTTP/1.1 413")
        assert httpx.post(f"{srv.url}/v1/sentiment", json={"text": "still fine"}).status_code == 200


# -- CORS ---------------------------------------------------------------------------------------------------------
def test_cors_is_closed_by_default(make_settings):
    preflight = {
        "origin": "https://evil.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-api-key",
    }
    with TestClient(create_app(make_settings())) as c:
        for response in (
            c.options("/v1/sentiment", headers=preflight),
            c.post("/v1/sentiment", json={"text": "great"}, headers={"origin": "https://evil.example"}),
            c.get("/v1/models", headers={"origin": "https://evil.example"}),
        ):
            assert not any(h.startswith("access-control-") for h in response.headers), response.headers
    with TestClient(create_app(make_settings(cors_origins=["https://page.example"]))) as c:
        allowed = c.options("/v1/sentiment", headers={**preflight, "origin": "https://page.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://page.example"
        denied = c.options("/v1/sentiment", headers=preflight)
        assert "access-control-allow-origin" not in denied.headers


# -- container ---------------------------------------------------------------------------------------------------
def test_images_and_compose_declare_non_root_and_read_only():
    yaml = pytest.importorskip("yaml")
    stages, current = {}, None
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if match := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = match.group(1)
        elif match := re.match(r"USER\s+(\S+)", line):
            stages[current] = match.group(1)
    for stage in ("runtime", "gpu"):  # the images that run the service
        user = stages.get(stage, "root").split(":")[0]
        assert user not in ("root", "0"), (stage, user)
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("api", "api-gpu", "batch"):
        service = services[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
