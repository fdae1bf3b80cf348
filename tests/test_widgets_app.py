"""widgets.WorkbenchApp driven as a person would (set values, click buttons) on the embedded model:
load, add two engines, compare, stream in the Playground, start and stop the server, bench, and the
helpers behind the views (throttle, forms, charts)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.test_server_support import wait_until
from widgets import WorkbenchApp
from widgets.forms import parse_knobs, parse_prompts, sampling_params
from widgets.svg_chart import bar_chart, line_chart
from widgets.throttle import Throttle

pytestmark = pytest.mark.slow

KNOBS = {"vinference": {"max_batch_size": "4", "max_model_len": "256",
                        "prefill_buckets": "32, 64, 256"},
         "vsurge": {"max_concurrent_decodes": "4", "max_model_len": "256",
                    "prefill_buckets": "32, 64, 256"}}


@pytest.fixture(scope="module")
def app():
    app = WorkbenchApp(live=False)
    yield app
    app.close(workbench=True)


def add_engine(app, kind, name):
    view = app.engines
    view.kind.value = kind
    view.name.value = name
    for knob, text in KNOBS[kind].items():
        view.knob_boxes[knob].value = text
    view.add_button.click()
    assert view.tasks.wait(300)


def test_load_through_the_model_tab(app):
    assert app.titles == ("Model", "Engines", "Playground", "Compare", "Metrics", "Server",
                          "Bench")
    view = app.model
    view.source.value = "embedded"
    view.dtype.value = "float32"
    view.button.click()
    assert view.tasks.wait(300) and app.workbench.model is not None
    assert not view.button.disabled
    assert "Loaded SmolLM2" in view.status.value and "num_hidden_layers" in view.details.value
    assert "cpu" in view.devices.value and "process RSS" in view.devices.value
    view.source.value = "/no/such/model"  # an error is shown, the model stays
    view.button.click()
    assert view.tasks.wait(60) and "not found" in view.status.value
    assert app.workbench.model is not None


def test_add_two_engines_through_the_form(app):
    add_engine(app, "vinference", "vi")
    add_engine(app, "vsurge", "vs")
    assert list(app.workbench.engines) == ["vi", "vs"], app.engines.status.value
    table = app.engines.table.value
    assert "vi" in table and "vsurge" in table and "running" in table
    # every tab's engine selector followed
    assert app.playground.engine.options == ("vi", "vs")
    assert app.compare.engines.value == ("vi", "vs")
    # a bad knob is shown in the page, nothing is added
    app.engines.kind.value = "vsurge"
    app.engines.knob_boxes["max_concurrent_decodes"].value = "lots"
    app.engines.add_button.click()
    assert app.engines.tasks.wait(60)
    assert "must be an integer" in app.engines.status.value
    assert list(app.workbench.engines) == ["vi", "vs"]


def test_compare_two_prompts_side_by_side(app):
    view = app.compare
    view.prompts.value = "The capital of France is\nWrite a haiku about the sea."
    view.chat.value = False
    view.sampling["max_tokens"].value = 12
    view.sampling["ignore_eos"].value = True
    view.run_button.click()
    assert view.tasks.wait(300)
    cmp = view.comparison
    assert cmp is not None and cmp.all_identical, view.status.value
    for i in range(2):
        assert view.text("vi", i) and view.text("vi", i) == view.text("vs", i)
    assert "Paris" in view.text("vi", 0)
    assert view.grid.value.count("identical") == 2 and "Paris" in view.grid.value
    assert "output_tok_s" in view.summary.value and "2/2" in view.summary.value
    assert "done: 2/2" in view.status.value
    assert "compile_s" in view.summary.value and cmp.runs["vi"].compile_s is not None
    view.run_button.click()  # the same static batch again: nothing new to compile
    assert view.tasks.wait(300)
    assert view.comparison is not cmp and view.comparison.runs["vi"].compile_s < 0.5
    assert "compiling" not in view.status.value or "vi:" not in view.status.value


def test_playground_streams_into_the_page(app):
    view = app.playground
    view.engine.value = "vs"
    view.mode.value = "completion"
    view.prompt.value = "Once upon a time"
    view.sampling["max_tokens"].value = 40
    view.sampling["ignore_eos"].value = True
    seen = []  # (output length, whether the stats line was already written)
    view.output.observe(lambda ch: seen.append((len(ch["new"]), bool(view.stats.value))),
                        names="value")
    view.send_button.click()
    assert view.tasks.wait(300)
    grew_early = [n for n, finished in seen if not finished]
    assert len(grew_early) >= 2 and grew_early == sorted(grew_early), seen
    assert "40</b> tokens" in view.stats.value and "length" in view.stats.value
    # chat mode keeps a conversation
    view.clear_button.click()
    view.mode.value = "chat"
    view.prompt.value = "Hi!"
    view.sampling["max_tokens"].value = 8
    view.send_button.click()
    assert view.tasks.wait(300)
    assert [m["role"] for m in view.messages] == ["user", "assistant"]
    assert "assistant" in view.output.value


def test_playground_stop_aborts(app):
    view = app.playground
    view.engine.value = "vs"
    view.mode.value = "completion"
    view.prompt.value = "Count to one thousand:"
    view.sampling["max_tokens"].value = 200
    view.send_button.click()
    assert wait_until(lambda: len(view.text) > 0, timeout=120)
    view.stop_button.click()
    assert view.tasks.wait(60)
    assert "abort" in view.stats.value


def test_bad_sampling_values_are_shown(app):
    view = app.playground
    view.sampling["seed"].value = "not a number"
    view.prompt.value = "x"
    view.send_button.click()
    assert "seed must be an integer" in view.status.value
    view.sampling["seed"].value = ""


def test_server_tab_start_and_stop(app):
    view = app.server
    view.engines.value = ("vs",)
    view.start_button.click()
    assert view.tasks.wait(60) and app.workbench.server is not None, view.status.value
    url = app.workbench.server.url
    assert url in view.url.value and "curl " in view.snippets.value
    assert "from openai import OpenAI" in view.snippets.value
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["vs"]
    view.refresh()
    assert "/v1/models" in view.log_table.value
    port = app.workbench.server.port
    view.stop_button.click()
    assert view.tasks.wait(60) and app.workbench.server is None
    assert "not running" in view.url.value
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_bench_tab_and_metrics_charts(app):
    view = app.bench
    view.engines.value = ("vs",)
    view.num_requests.value = 4
    view.concurrency.value = 2
    view.max_tokens.value = 4
    view.run_button.click()
    assert view.tasks.wait(300), view.status.value
    assert view.progress.value == 4 and "output tok/s" in view.table.value
    assert all("<svg" in c.value and "<rect" in c.value for c in view.charts.children)
    view.rate.value = "fast"
    view.run_button.click()
    assert "request rate" in view.status.value
    app.metrics.draw()
    assert all("<svg" in c.value for c in app.metrics.charts)
    assert "<polyline" in app.metrics.charts[0].value  # tok/s of the load above


def test_removing_an_engine_refreshes_every_tab(app):
    app.engines.remove_name.value = "vi"
    app.engines.remove_button.click()
    assert app.engines.tasks.wait(60)
    assert list(app.workbench.engines) == ["vs"]
    assert app.playground.engine.options == ("vs",) and app.compare.engines.options == ("vs",)


# ---- helpers behind the views ------------------------------------------------------------------

def test_throttle_limits_the_rate_and_draws_the_last_state():
    drawn = []
    state = {"n": 0}
    t = Throttle(lambda: drawn.append(state["n"]), max_rate=20)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        state["n"] += 1
        t()
        time.sleep(0.001)
    time.sleep(0.1)
    assert 5 <= len(drawn) <= 12  # 20 per second over 0.5 s, plus the trailing draw
    assert drawn[-1] == state["n"]  # the final state was drawn
    t.flush()
    assert drawn[-1] == state["n"]


def test_forms_parse_or_name_the_field():
    sp = sampling_params({"max_tokens": 5.0, "temperature": 0.7, "seed": " 42 ",
                          "stop": "\n\nEND\n", "top_k": 40})
    assert (sp.max_tokens, sp.seed, sp.stop, sp.top_k) == (5, 42, ("END",), 40)
    assert sampling_params({"seed": ""}).seed is None
    with pytest.raises(ValueError, match="top_p"):
        sampling_params({"top_p": 0.0})
    knobs = parse_knobs("vsurge", {"max_concurrent_decodes": "8", "interleaved_mode": "true",
                                   "prefill_buckets": "16, 32", "max_model_len": "",
                                   "scheduling_policy": " priority "})
    assert knobs == {"max_concurrent_decodes": 8, "interleaved_mode": True,
                     "prefill_buckets": (16, 32), "scheduling_policy": "priority"}
    with pytest.raises(ValueError, match="'max_concurrent_decodes' must be an integer"):
        parse_knobs("vsurge", {"max_concurrent_decodes": "8.5"})
    with pytest.raises(ValueError, match="no knob"):
        parse_knobs("vinference", {"slots": "2"})
    assert parse_prompts(" a \n\n b\n") == ["a", "b"]
    with pytest.raises(ValueError, match="at least one prompt"):
        parse_prompts("\n \n")


def test_charts_draw_series_and_gaps():
    svg = line_chart([("a", [0, 1, 2, 3], [1.0, None, 2.0, 3.0]), ("b", [0, 1], [5, 5])],
                     title="t <x>")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2  # a: [2, 3]; b: [0, 1]
    assert svg.count("<circle") == 1 and "t &lt;x&gt;" in svg
    assert "no data yet" in line_chart([("a", [], [])])
    bars = bar_chart(["x", "y"], [2.0, None], unit="tok/s")
    assert bars.count("<rect") == 1 and "2 tok/s" in bars
