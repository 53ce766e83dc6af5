"""The API docs (/docs, Swagger UI) render in a real headless browser with every request off
localhost blocked: their assets come from the service (service/docs.py), not a CDN. Same browser set-up as
tests/service/test_page.py (Debian's chromium via playwright, `make browser`)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from test_page import guarded_page, live_server  # noqa: F401 (fixture; tests/service is on sys.path)


def test_swagger_ui_renders_every_operation_offline(chromium, live_server):  # noqa: F811
    with guarded_page(chromium, live_server + "/docs", ready=None) as pg:  # no request leaves localhost
        # Swagger UI breaks paths with zero-width spaces when drawing them; data-path holds the path as written.
        pg.wait_for_selector('.opblock-summary-path[data-path="/v1/sentiment/batch"]')
        paths = {el.get_attribute("data-path") for el in pg.locator(".opblock-summary-path").all()}
        assert {"/v1/sentiment", "/v1/models", "/readyz"} <= paths
        assert "IMDB sentiment service" in pg.locator(".info .title").inner_text()


def test_docs_html_names_no_external_url_and_redoc_is_gone(make_settings):
    from service.app import create_app

    with TestClient(create_app(make_settings())) as client:
        html = client.get("/docs").text
        assert "http://" not in html and "https://" not in html, html
        for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
            assert client.get(asset).status_code == 200
        assert client.get("/redoc").status_code == 404  # ReDoc would fetch from a CDN
