"""Fixtures for the HTTP service tests.

serving_root   a model root holding copies of three artifacts: the trained `tiny-lstm` (bidirectional), an
               untrained unidirectional GRU and an untrained unidirectional LSTM with last-state pooling;
               copies, so tests may break files without touching the shared session exports
make_settings  Settings over `serving_root`, `tiny-lstm` the default model, one onnxruntime thread (overridable)
make_client    context manager: a TestClient over a fresh app, lifespan run (models loaded, batchers started)
client         one such client shared by the module
async_client   async context manager: an httpx AsyncClient on an app in-process, lifespan run (concurrency tests)
"""

from __future__ import annotations

import shutil
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

# The model names (test modules spell them out too: conftest is not imported).
GRU_UNI = "gru-uni-meanmax-1"
LSTM_UNI_LAST = "lstm-uni-last-1"
DEFAULT = "tiny-lstm"


@pytest.fixture(scope="session")
def serving_root(tiny_artifact, export_random, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_root")
    shutil.copytree(tiny_artifact, root / DEFAULT)
    for export in (export_random("gru", False), export_random("lstm", False, "last")):
        shutil.copytree(export.artifact, root / export.artifact.name)
    return root


@pytest.fixture(scope="session")
def make_settings(serving_root):
    def make(**overrides) -> Settings:
        return Settings(
            **{"model_root": serving_root, "default_model": DEFAULT, "intra_op_threads": 1, "inter_op_threads": 1, **overrides}
        )

    return make


@pytest.fixture(scope="session")
def make_client(make_settings):
    @contextmanager
    def make(**overrides):
        with TestClient(create_app(make_settings(**overrides))) as client:
            yield client

    return make


@pytest.fixture(scope="module")
def client(make_client):
    with make_client() as c:
        yield c


@pytest.fixture(scope="session")
def async_client():
    @asynccontextmanager
    async def make(app):
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
                yield c

    return make


# One definition for every page test module, and one browser per module: playwright's sync API keeps an event
# loop running in the main thread while it lives, so a second `sync_playwright()` ("Sync API inside the asyncio
# loop") or a later test's `asyncio.run()` ("cannot be called from a running event loop") fails beside it.
@pytest.fixture(scope="module")
def chromium():
    """A headless chromium driven by playwright, for one test module. The browser is set up
    by `make browser` (which .ci/run calls before `make test`), never by a test: an apt run inside a fixture can
    collide with another apt run. Missing, the page tests fail saying so; they do not skip silently."""
    import test_page

    try:
        from playwright import sync_api as playwright_api
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'", pytrace=False)
    if not Path(test_page.CHROMIUM).exists():
        missing = f"{test_page.CHROMIUM} is missing: run `make browser` (installs Debian's chromium with apt-get)"
        pytest.fail(missing, pytrace=False)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=test_page.CHROMIUM, headless=True, args=test_page.CHROMIUM_ARGS)
        yield browser
        browser.close()
