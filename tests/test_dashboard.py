"""The Panel dashboard in a real browser (Debian chromium driven by Python playwright), served from
this test process: no console errors and no request leaving 127.0.0.1; load the model, add two
engines, compare (text seen growing while it streams; identical badges), a metrics chart gaining
points during a load, an eSurge page map and request timeline, the Server tab's URL answering; errors shown in the page; two browser tabs
comparing at once without mixing their runs. A screenshot per tab is saved (set
$WORKBENCH_SCREENSHOTS to a directory to keep them, e.g. docs/screenshots for the README)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):  # .ci/run installs it; say so instead of skipping silently
    pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/bootstrap.sh does)",
                pytrace=False)

from playwright.sync_api import sync_playwright  # noqa: E402

from widgets.dashboard import SESSIONS, serve_dashboard  # noqa: E402
from workbench.facade import Workbench  # noqa: E402

LOCAL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)[:/]")
KNOBS = {"max_model_len": "256", "prefill_buckets": "32, 64, 256"}
TIMEOUT_MS = 240_000


class ErrorLog(logging.Handler):
    """ERROR records of the server side (Bokeh callbacks, the views): a page can look alive while
    its periodic callback raises on every tick."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(self.format(record))


SERVER_ERRORS = ErrorLog()


@pytest.fixture(scope="module")
def dashboard():
    import panel as pn

    loggers = [logging.getLogger(n) for n in ("bokeh", "panel", "tornado", "widgets")]
    for lg in loggers:
        lg.addHandler(SERVER_ERRORS)
    wb = Workbench(history_interval=0.25)
    handle = serve_dashboard(wb)
    yield wb, handle
    for lg in loggers:
        lg.removeHandler(SERVER_ERRORS)
    handle.stop()
    wb.close()
    pn.state.reset()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


class Page:
    """One browser tab on the dashboard, recording console errors and outside requests."""

    def __init__(self, browser, url):
        self.page = browser.new_page(viewport={"width": 1280, "height": 860})
        self.errors, self.outside = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if LOCAL.match(r.url) or r.url.startswith(
            ("data:", "blob:")) else self.outside.append(r.url))
        t0 = time.monotonic()
        self.page.goto(url, wait_until="networkidle", timeout=120_000)
        self.page.set_default_timeout(TIMEOUT_MS)
        # Bokeh renders the tabs after the page's resources arrive (seconds on a loaded machine)
        self.page.locator(".bk-tab").first.wait_for(state="visible")
        self.load_s = time.monotonic() - t0

    def tab(self, name):
        self.page.locator(".bk-tab", has_text=re.compile(f"^{name}$")).first.click()
        self.page.wait_for_timeout(300)

    def click(self, name):
        self.page.get_by_role("button", name=name, exact=True).first.click()

    def text(self, selector):
        """The text an HTML pane shows (its content lives in the pane's shadow root)."""
        return self.page.locator(f"{selector} div").first.inner_text()

    def grid_text(self):
        """Every pane of the Compare grid (prompts and engines' text), joined."""
        return " ".join(self.page.locator(".wb-compare-grid .bk-panel-models-markup-HTML div")
                        .all_inner_texts())

    def wait_text(self, selector, pattern, timeout=TIMEOUT_MS):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout / 1e3
        while time.monotonic() < deadline:
            text = self.text(selector)
            if rx.search(text):
                return text
            self.page.wait_for_timeout(200)
        raise AssertionError(f"{selector!r} never matched {pattern!r}; it shows {text!r}")

    def source_len(self, name):
        return self.page.evaluate(
            "(n) => { const m = Bokeh.documents[0].get_model_by_name(n);"
            " return m ? m.data.t.length : -1 }", name)

    def shot(self, tmp_path, name):
        path = tmp_path / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        keep = os.environ.get("WORKBENCH_SCREENSHOTS")
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(path, os.path.join(keep, path.name))
        return path


@pytest.fixture(scope="module")
def page(dashboard, browser):
    _, handle = dashboard
    return Page(browser, handle.url)


def test_the_page_loads_offline(page):
    paint = page.page.evaluate(
        "() => performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
    print(f"\npage load {page.load_s:.2f} s; paint {paint}")  # benchmarks/README quotes it
    assert page.page.locator(".bk-tab").count() == 7
    assert page.errors == [] and page.outside == []


def test_a_bad_model_path_is_shown_in_the_page(page):
    page.tab("Model")
    page.page.locator(".wb-model-source input").fill("/no/such/model")
    page.click("Load")
    page.wait_text(".wb-status-model", "Error: .*not found")


def test_load_the_model(page, dashboard, tmp_path):
    wb, _ = dashboard
    page.page.locator(".wb-model-source input").fill("embedded")
    page.click("Load")
    page.wait_text(".wb-status-model", "Loaded SmolLM2")
    assert wb.model is not None and wb.model.name.startswith("SmolLM2")
    page.shot(tmp_path, "model")


def add_engine(page, kind, name):
    page.page.locator(".wb-kind select").select_option(kind)
    # the server rebuilds the knob form and proposes a name: wait for it before typing over it
    box = page.page.locator(".wb-engine-name input")
    deadline = time.monotonic() + 30
    while not box.input_value().startswith(kind) and time.monotonic() < deadline:
        page.page.wait_for_timeout(100)
    page.page.wait_for_timeout(300)
    box.fill(name)
    for knob, value in KNOBS.items():
        page.page.locator(f".wb-knob-{knob} input").fill(value)
    page.click("Add engine")
    page.wait_text(".wb-status-engines", f"added '{name}'|Error")


def test_add_two_engines_and_a_bad_knob(page, dashboard, tmp_path):
    wb, _ = dashboard
    page.tab("Engines")
    add_engine(page, "vinference", "vi")
    add_engine(page, "vsurge", "vs")
    assert list(wb.engines) == ["vi", "vs"], page.text(".wb-status-engines")
    page.wait_text(".wb-engines-table", "vsurge")
    page.page.locator(".wb-knob-max_concurrent_decodes input").fill("many")
    page.click("Add engine")
    page.wait_text(".wb-status-engines", "Error: .*max_concurrent_decodes.* must be an integer")
    assert list(wb.engines) == ["vi", "vs"]
    page.shot(tmp_path, "engines")


def test_compare_streams_side_by_side(page, tmp_path):
    page.tab("Compare")
    page.page.locator(".wb-prompts textarea").fill(
        "The capital of France is\nWrite a haiku about the sea.")
    page.page.locator(".wb-compare .wb-sampling-max_tokens input").fill("16")
    page.click("Run comparison")
    lengths = []
    deadline = time.monotonic() + TIMEOUT_MS / 1e3
    while time.monotonic() < deadline:
        texts = page.page.locator(".wb-compare-grid .wb-text").all_inner_texts()
        lengths.append(sum(len(t) for t in texts))
        if page.page.locator(".wb-compare-grid .wb-badge").count() == 2:
            break
        page.page.wait_for_timeout(150)
    badges = page.page.locator(".wb-compare-grid .wb-badge").all_inner_texts()
    assert badges == ["identical", "identical"], badges
    growing = sorted(set(n for n in lengths if n > 0))
    assert len(growing) >= 3, f"text was not seen growing: {lengths}"
    page.wait_text(".wb-status-compare", "done: 2/2")
    assert "output_tok_s" in page.text(".wb-compare-summary")
    page.shot(tmp_path, "compare")


def test_two_browser_tabs_compare_at_once(page, browser, dashboard):
    _, handle = dashboard
    other = Page(browser, handle.url)
    try:
        for p, prompt in ((page, "Name a fruit."), (other, "Name a planet.")):
            p.tab("Compare")
            p.page.locator(".wb-prompts textarea").fill(prompt)
        page.click("Run comparison")
        other.click("Run comparison")
        for p in (page, other):
            p.wait_text(".wb-status-compare", "done: 1/1")
        mine, theirs = page.grid_text(), other.grid_text()
        assert "fruit" in mine and "planet" not in mine, mine
        assert "planet" in theirs and "fruit" not in theirs, theirs
        assert len(SESSIONS) >= 2 and other.errors == []
    finally:
        other.page.close()


def test_playground_streams(page, tmp_path):
    page.tab("Playground")
    page.page.locator(".wb-prompt textarea").fill("Tell me about the sea.")
    page.page.locator(".wb-playground .wb-sampling-max_tokens input").fill("16")
    page.click("Send")
    page.wait_text(".wb-playground-stats", "finish reason")
    assert "assistant" in page.text(".wb-playground-output")
    page.shot(tmp_path, "playground")


def test_a_metrics_chart_gains_points_during_a_load(page, tmp_path):
    page.tab("Metrics")
    before = page.source_len("metrics-vs")
    page.page.locator(".wb-load-requests input").fill("4")
    page.click("Send a load")
    page.wait_text(".wb-status-metrics", "load done")
    page.page.wait_for_timeout(1500)
    after = page.source_len("metrics-vs")
    assert before >= 0 and after > before + 3, (before, after)
    peak = page.page.evaluate(
        "() => Math.max(...Bokeh.documents[0].get_model_by_name('metrics-vs').data.output_tok_s"
        ".filter(x => !isNaN(x)))")
    assert peak > 0
    page.shot(tmp_path, "metrics")


def test_the_esurge_page_map_and_a_request_timeline(page, dashboard, tmp_path):
    from workbench.sampling_params import SamplingParams

    wb, _ = dashboard
    wb.add_engine("es", "esurge", max_model_len=256, num_pages=64)
    try:
        prompt = "The sea is wide and deep, and the ships that sail on it " * 3  # > 2 pages
        wb.engines["es"].generate([prompt], SamplingParams(max_tokens=8))
        page.tab("Metrics")
        page.wait_text(".wb-kv-engine", "es")
        page.page.locator(".wb-kv-engine select").select_option("es")
        page.wait_text(".wb-page-map-pane", "64 pages of 16 tokens")
        # the finished request's full blocks stay cached for a later prompt with the same prefix
        assert page.page.locator(".wb-page-map-pane rect[data-state=cached]").count() >= 2
        page.wait_text(".wb-timeline-pane", "finished")
        page.shot(tmp_path, "pages")
    finally:
        wb.remove_engine("es")


def test_server_tab_url_answers(page, dashboard, tmp_path):
    wb, _ = dashboard
    page.tab("Server")
    page.click("Start server")
    url = page.wait_text(".wb-server-url", r"http://127\.0\.0\.1:\d+")
    url = re.search(r"http://127\.0\.0\.1:\d+", url).group(0)
    models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert {m["id"] for m in models} == {"vi", "vs"}
    page.wait_text(".wb-request-log", "/v1/models")
    page.shot(tmp_path, "server")
    page.click("Stop server")
    page.wait_text(".wb-server-url", "not running")
    assert wb.server is None


def test_bench_tab(page, tmp_path):
    page.tab("Bench")
    page.page.locator(".wb-bench-requests input").fill("4")
    page.page.locator(".wb-bench-max-tokens input").fill("8")
    page.click("Run benchmark")
    page.wait_text(".wb-status-bench", "^done|Error")
    page.shot(tmp_path, "bench")
    assert page.errors == [] and page.outside == []


def test_the_server_logged_no_error(dashboard):
    """Last in the file: no periodic callback or redraw raised while the tests above ran."""
    assert SERVER_ERRORS.records == [], SERVER_ERRORS.records[:3]


def test_the_views_use_no_deprecated_panel_arguments():
    """Panel 2.0 drops a widget's `name=` (now `label=`) and a button's `button_type=` (now
    `color=`): building every tab raises no deprecation warning."""
    import warnings

    from widgets.dashboard.app import Dashboard

    wb = Workbench()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PendingDeprecationWarning)
            warnings.simplefilter("error", DeprecationWarning)
            Dashboard(wb)
    finally:
        wb.close()
