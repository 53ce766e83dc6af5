"""The diagnostics page (service/static/) in a real headless browser against a real uvicorn server on localhost.

Uses Debian's chromium (/usr/bin/chromium, installed by `make browser`) through the playwright Python package (dev
extra); no browser is ever downloaded. Every request the page makes must stay on localhost.
A screenshot of the analysed review goes to test-artifacts/page.png.

The README's screenshot is taken the same way against a running service (use the shipped model):

    sentiment-serve --port 8000 &
    .venv/bin/python tests/service/test_page.py http://127.0.0.1:8000/ docs/screenshot.png "$(cat review.txt)"
"""

from __future__ import annotations

import json
import math
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
MAX_TEXT_CHARS = 5_000  # the test server's limit, so the over-long review stays small
REVIEW = (
    "The first hour is slow and the dialogue is clumsy, but the last act is brilliant: tense, funny and "
    "beautifully shot. Worth the wait."
)
TIMEOUT_MS = 15_000
GRU_UNI = "gru-uni-meanmax-1"  # unidirectional: exact running score and contributions (tiny-lstm is bidirectional)
SHORT = "A wonderful film. The plot was dreadful, not bad."  # under every test model's token limit


@pytest.fixture(scope="module")
def live_server(make_settings):
    """uvicorn in a thread on a free localhost port, serving the three test models (tiny-lstm is the default)."""
    import uvicorn

    from service.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(make_settings(max_text_chars=MAX_TEXT_CHARS))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)
    sock.close()


@contextmanager
def guarded_page(browser, url: str, width: int = 1200, height: int = 900, ready: str | None = "#model-info dd >> text=%"):
    """A fresh page on `url`, once `ready` shows (default: the model list has arrived); fails if the page requested
    anything off localhost or threw a JavaScript error."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    outside, errors = [], []

    def gate(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", gate)
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        pg.goto(url)
        if ready:
            pg.wait_for_selector(ready)  # by default: validation accuracy shown, /v1/models answered
        yield pg
    finally:
        context.close()
    assert outside == [], f"the page requested non-local URLs: {outside}"
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(chromium, live_server):
    with guarded_page(chromium, live_server + "/") as pg:
        yield pg


def analyse(pg, text: str = REVIEW, *, attribution: bool = False, model: str | None = None) -> None:
    if model:
        pg.select_option("#model", model)
    pg.fill("#text", text)
    pg.set_checked("#attribution", attribution)
    pg.click("#submit")
    pg.wait_for_selector("#status:text-matches('^Done')")  # (not wait_for_function: the page's CSP forbids eval)


def diagnose(live_server, text: str, model: str | None = None, **extra) -> dict:
    """The API's answer for what the page asks (diagnostics on), to compare the page against."""
    body = {"text": text, "diagnostics": True, **extra, **({"model": model} if model else {})}
    response = httpx.post(live_server + "/v1/sentiment", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def rgb(pg, selector: str, index: int) -> tuple[int, ...]:
    colour = pg.locator(selector).nth(index).evaluate("el => getComputedStyle(el).backgroundColor")
    return tuple(int(v) for v in colour[colour.index("(") + 1 : -1].split(",")[:3])


def test_page_shows_the_api_result_and_draws_every_chart(page, live_server):
    analyse(page, model=GRU_UNI)
    api = diagnose(live_server, REVIEW, GRU_UNI)
    n, report = api["num_tokens"], api["diagnostics"]
    assert report["summary"]["running_score_method"] == "exact"

    assert page.inner_text("#verdict-label").lower() == api["label"]
    assert abs(float(page.inner_text("#verdict-score")) - api["score"]) <= 0.0005 + 1e-6
    assert page.inner_text("#token-count") == str(n)
    assert page.locator("#token-strip .tok").count() == n
    # Running score (exact for this model): one line through every token, the final score and label at its end.
    path = page.locator("#score-chart path.series")
    assert path.get_attribute("d").count("L") == n - 1 and path.get_attribute("data-points") == str(n)
    assert api["label"] in page.text_content("#score-chart .end-label")
    assert page.locator("#score-note").is_hidden()
    # Gate saturation: one bar per layer, direction and gate; the update gate over time: one line per layer/direction.
    assert page.locator("#saturation-chart rect.bar").count() == len(report["layers"]) * len(report["gates"])
    assert page.input_value("#gate-select") == "update"
    assert page.locator("#gate-chart path.series").count() == len(report["layers"])
    # Heatmap: drawn on the canvas (not blank), one column per token.
    heat = page.locator("#heatmap")
    assert heat.get_attribute("data-drawn") == "true"
    assert heat.get_attribute("data-columns") == str(n)
    coloured = page.evaluate("""() => {
        const c = document.getElementById('heatmap');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let k = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && (px[i] < 240 || px[i + 2] < 240)) k++;
        return k;
    }""")
    assert coloured > 1000
    # Text alternatives: each SVG chart is a named image, the canvas has a description.
    for chart in ("#score-chart", "#saturation-chart", "#gate-chart"):
        svg = page.locator(f"{chart} svg")
        assert svg.get_attribute("role") == "img" and svg.get_attribute("aria-labelledby")
    assert "tokens" in page.text_content("#score-chart desc")
    assert heat.get_attribute("aria-label").startswith("Heatmap of the")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


def test_token_colours_are_contributions_in_log_odds(page, live_server):
    analyse(page, model=GRU_UNI)
    tokens = diagnose(live_server, REVIEW, GRU_UNI)["diagnostics"]["tokens"]
    contributions = [t["contribution"] for t in tokens]
    most_positive = max(range(len(tokens)), key=contributions.__getitem__)
    most_negative = min(range(len(tokens)), key=contributions.__getitem__)
    assert contributions[most_positive] > 0 > contributions[most_negative]
    # PuOr: purple (blue above red) towards positive, orange (red above blue) towards negative.
    r, _, b = rgb(page, "#token-strip .tok", most_positive)
    assert b > r
    r, _, b = rgb(page, "#token-strip .tok", most_negative)
    assert r > b
    legend = page.inner_text("#token-legend")
    assert "log-odds" in legend and "contribution" in legend
    # The scale is symmetric around 0: its two ends are the same number with opposite signs.
    left, right = page.locator("#token-legend .legend-row > span").all_inner_texts()[::2]
    assert re.search(r"−(\d+\.\d+) log-odds", left)[1] == re.search(r"\+(\d+\.\d+) log-odds", right)[1]
    assert f"Contribution {'+' if contributions[1] > 0 else '−'}" in page.locator("#token-strip .tok").nth(1).get_attribute(
        "aria-label"
    )


def test_bidirectional_model_shows_the_note_instead_of_the_chart(page, live_server):
    analyse(page, SHORT)  # tiny-lstm, the default, is bidirectional
    summary = diagnose(live_server, SHORT)["diagnostics"]["summary"]
    assert summary["running_score_method"] is None and summary["running_score_note"]
    note = page.locator("#score-note")
    assert note.is_visible() and summary["running_score_note"] in note.inner_text()
    assert page.locator("#score-chart svg").count() == 0  # no misleading line
    # Its tokens still show contributions (occlusion), but no running score before/after.
    page.locator("#token-strip .tok").nth(1).focus()
    tip = page.inner_text("#token-tip")
    assert "Contribution" in tip and "occlusion" in tip and "Score before" not in tip
    assert "Running score" not in page.locator("#token-strip .tok").nth(1).get_attribute("aria-label")
    assert page.inner_text("#score-readout") == ""


@pytest.mark.parametrize("model", [None, GRU_UNI])
def test_verdict_line_names_the_words_with_the_largest_contributions(page, live_server, model):
    analyse(page, SHORT, model=model)
    api = diagnose(live_server, SHORT, model)
    summary, tokens = api["diagnostics"]["summary"], api["diagnostics"]["tokens"]
    towards, against = ("top_positive", "top_negative") if api["label"] == "positive" else ("top_negative", "top_positive")
    top = summary[towards][0]
    # The API ranks by contribution: the top word is the token with the largest contribution towards the verdict.
    sign = 1 if api["label"] == "positive" else -1
    assert top["index"] == max(range(len(tokens)), key=lambda i: sign * tokens[i]["contribution"])
    why = page.inner_text("#verdict-why")
    size = abs(top["contribution"])
    value = f"{'+' if top['contribution'] > 0 else '−'}{size:.{2 if size >= 0.01 else 3}f}"  # as the page writes it
    assert why.startswith(f"{api['label'].capitalize()} mainly because of “{top['text']}” ({value})"), why
    if summary[against]:
        assert f"“{summary[against][0]['text']}”" in why.split("other way:")[1]
    assert "log-odds" in why
    # The lists below it carry the same contributions, and each word leads to its token.
    first = page.locator("#top-tokens button").first
    assert first.inner_text().startswith(summary["top_positive"][0]["text"] if summary["top_positive"] else "")
    first.click()
    assert page.evaluate("document.activeElement.dataset.index") == str(
        (summary["top_positive"] or summary["top_negative"])[0]["index"]
    )


def test_tokens_are_reachable_by_keyboard_and_show_their_numbers(page):
    analyse(page, model=GRU_UNI)
    page.focus("#text")
    for _ in range(40):  # Tab through the form and the top-token buttons to the strip's one tab stop
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('tok')"):
            break
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    focused = page.locator("#token-strip .tok:focus")
    label = focused.get_attribute("aria-label")
    assert "Contribution" in label and "log-odds" in label and "Running score" in label
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    tip = page.locator("#token-tip")
    text = tip.inner_text()
    assert tip.is_visible() and "Contribution" in text and "Score before → after" in text and "update" in text
    assert page.locator("#score-chart .cursor").get_attribute("visibility") == "visible"
    assert page.inner_text("#score-readout").startswith("Token 2")
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.dataset.index") == str(page.locator("#token-strip .tok").count() - 1)


def test_attribution_toggle_colours_tokens_by_occlusion(page):
    analyse(page, model=GRU_UNI, attribution=True)
    assert page.locator("#colour-by").is_visible()
    assert "Occlusion attribution" in page.locator("#token-strip .tok").first.get_attribute("aria-label")
    before = [rgb(page, "#token-strip .tok", i) for i in range(5)]
    page.check('input[name="colour-by"][value="attribution"]')
    legend = page.inner_text("#token-legend")
    assert "occlusion attribution" in legend and "log-odds" in legend
    assert "Coloured by attribution" in page.locator("#token-strip .tok").first.get_attribute("aria-label")
    assert [rgb(page, "#token-strip .tok", i) for i in range(5)] != before  # recoloured (the GRU's differ)


def test_truncated_review_says_so_and_marks_the_skipped_part(page):
    analyse(page, "Great start. " + "The plot drags on and nothing happens. " * 20 + "In the end it was wonderful.")
    assert page.inner_text("#token-count") == "64"  # the tiny model reads 64 tokens: the first 16 and the last 48
    assert "longer than the model reads" in page.inner_text("#truncated-note")
    assert "not read by the model" in page.inner_text("#token-strip .skipped")
    assert page.locator("#heatmap").get_attribute("data-columns") == "64"


def test_api_errors_are_shown_in_plain_words(page):
    page.fill("#text", "   ")
    page.click("#submit")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.get_attribute("role") == "alert"
    assert "The review is empty" in error.inner_text()

    page.fill("#text", "x" * (MAX_TEXT_CHARS + 1))
    page.click("#submit")
    page.wait_for_selector("#error:has-text('too long')")
    assert f"the limit is {MAX_TEXT_CHARS:,}" in error.inner_text()
    assert "HTTP 413" in error.inner_text()  # the technical detail stays, below the plain message


def test_model_picker_switches_to_a_gru(page):
    picker = page.locator("#model")
    assert picker.is_visible() and picker.locator("option").count() == 3
    page.select_option("#model", "gru-uni-meanmax-1")
    assert "GRU" in page.inner_text("#model-info")
    analyse(page)
    assert "gru-uni-meanmax-1" in page.inner_text("#verdict-model")
    assert page.input_value("#gate-select") == "update"
    assert page.locator("#gate-chart path.series").count() == 1  # one layer, one direction


def test_narrow_screen_has_no_sideways_scroll(chromium, live_server):
    with guarded_page(chromium, live_server + "/", width=360, height=740) as pg:
        analyse(pg, model=GRU_UNI)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 360
        assert pg.locator("#score-chart svg").bounding_box()["width"] <= 360


def long_report(base: dict, text: str, repeats: int) -> dict:
    """`base` (the API's answer for `text`) tiled `repeats` times, as if for `" ".join([text] * repeats)`: a report as
    large as a long review's, which the test models (24 and 64 tokens) cannot give."""
    n, step = base["num_tokens"], len(text) + 1
    report = json.loads(json.dumps(base))
    d = report["diagnostics"]
    d["tokens"] = [
        {**t, "index": k * n + t["index"], "start": k * step + t["start"], "end": k * step + t["end"]}
        for k in range(repeats)
        for t in base["diagnostics"]["tokens"]
    ]
    for layer in d["layers"]:
        for key in ("hidden_norm", "delta_norm"):
            layer[key] = layer[key] * repeats
        for key in ("gate_mean", "gate_saturation"):
            layer[key] = {g: v * repeats for g, v in layer[key].items()}
    for block in d["hidden"]["layers"]:
        block["values"] = block["values"] * repeats
    report["num_tokens"] = n * repeats
    return report


def test_long_review_renders_quickly(page, live_server):
    base = diagnose(live_server, SHORT, GRU_UNI, include_hidden=True)
    repeats = math.ceil(5_000 / base["num_tokens"])
    report = long_report(base, SHORT, repeats)
    n = report["num_tokens"]
    # The service answers with the long report (the test server's limits are too small for a real one).
    page.route(
        "**/v1/sentiment", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(report))
    )
    started = time.perf_counter()
    analyse(page, " ".join([SHORT] * repeats), model=GRU_UNI)
    elapsed = time.perf_counter() - started
    render_ms = int(page.get_attribute("#results", "data-render-ms"))
    print(f"{n} tokens: rendered in {render_ms} ms, {elapsed:.2f} s from click to done")
    assert page.locator("#token-strip .tok").count() == n >= 5_000
    # Generous bounds: 0.26-1.2 s in-page (0.8-3.3 s click to done) on a 2-core machine at load average ~9.
    assert render_ms < 4_000 and elapsed < 15
    # The chart is downsampled to its width (a few points per pixel), not one point per token.
    path = page.locator("#score-chart path.series")
    points = int(path.get_attribute("data-points"))
    assert points < min(n, 4 * path.bounding_box()["width"] + 8)
    assert page.locator("#heatmap").get_attribute("data-columns") == str(n)
    # Still usable: the last token is reachable by keyboard and its numbers show.
    page.locator("#token-strip .tok").first.focus()
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.dataset.index") == str(n - 1)
    assert page.inner_text("#score-readout").startswith(f"Token {n}")


def take_screenshot(url: str, out: str, text: str = REVIEW, width: int = 1200) -> None:
    """Analyse `text` (with attribution) on a running service and save a full-page screenshot, with the tooltip of
    the token "brilliant" (else the first token) open."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        with guarded_page(browser, url, width) as pg:
            analyse(pg, text, attribution=True)
            token = pg.locator("#token-strip .tok", has_text="brilliant")
            (token if token.count() else pg.locator("#token-strip .tok")).first.focus()
            pg.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":  # URL OUT [TEXT]
    take_screenshot(*sys.argv[1:4])
