"""The Metrics tab's page map and request timeline: the SVG drawings from snapshots and events
(synthetic), then through the workbench on a tiny eSurge and vSurge (the tab's state and the
ipywidgets view)."""

from __future__ import annotations

import re

import pytest

import workbench as wb
from widgets.kv_map import page_map_svg, timeline_rows, timeline_svg
from widgets.state.metrics import MetricsState
from workbench.sampling_params import SamplingParams


def snapshot(states, owners=None):
    owners = owners or {}
    pages = [{"page": i, "state": s, "ref_cnt": len(owners.get(i, ())),
              "owners": owners.get(i, []), "hash": "ab12" if s != "free" else None}
             for i, s in enumerate(states)]
    n = {s: states.count(s) for s in ("used", "cached", "free")}
    return {"num_pages": len(states), "page_size": 16, "usage": n["used"] / len(states),
            "num_used": n["used"], "num_cached": n["cached"], "num_free": n["free"],
            "pages": pages}


def test_page_map_draws_each_page_in_its_state_and_outlines_one_request():
    snap = snapshot(["used", "used", "cached", "free", "free", "used"],
                    {0: ["a"], 1: ["a", "b"], 5: ["<b>"]})
    svg = page_map_svg(snap, per_row=4, highlight="a")
    assert re.findall(r"data-state='(\w+)'", svg) == ["used", "used", "cached", "free", "free",
                                                      "used"]
    assert svg.count("stroke='#000'") == 2  # pages 0 and 1 hold request a
    assert "used 3 (50%), cached 1, free 2" in svg
    assert "&lt;b&gt;" in svg and "<b>" not in svg  # owners are escaped
    assert "height='52'" in svg  # two rows of four: 22 + 2 * 13 + 4


def test_timeline_lanes_follow_the_events():
    ev = [{"event": "queued", "time": 10.0, "num_prompt_tokens": 40},
          {"event": "scheduled", "time": 10.1},
          {"event": "prefill_chunk", "time": 10.1, "start": 0, "num_tokens": 16},
          {"event": "prefill_chunk", "time": 10.2, "start": 16, "num_tokens": 24},
          {"event": "first_token", "time": 10.25},
          {"event": "preempted", "time": 10.4},
          {"event": "resumed", "time": 10.6},
          {"event": "finished", "time": 11.0, "reason": "length"}]
    svg = timeline_svg(ev)
    assert svg.count("<rect") == 3  # waiting, waiting after the preemption, decoding
    assert svg.count("stroke-width='3'") == 2  # one tick per prefill chunk
    assert "1000.0 ms" in svg and "running" not in svg
    rows = timeline_rows(ev)
    assert rows[0]["+ms"] == 0 and rows[-1] == {"+ms": 1000.0, "event": "finished",
                                                "details": "reason=length"}
    running = timeline_svg(ev[:2], now=12.0)
    assert "2000.0 ms (running)" in running
    assert timeline_svg([]) == "<i>no events</i>" and timeline_rows([]) == []


@pytest.fixture(scope="module")
def bench(tiny_random_lm):
    b = wb.Workbench()
    b.load(tiny_random_lm)
    b.add_engine("es", "esurge", max_model_len=128, num_pages=24, page_size=8)
    b.add_engine("vs", "vsurge", max_concurrent_decodes=2, max_model_len=128)
    b.add_engine("vi", "vinference", max_batch_size=2, max_model_len=128)
    yield b
    b.close()


def test_metrics_state_lists_pages_and_timelines(bench):
    state = MetricsState(bench)
    kv = {i["name"]: i["kv_cache_bytes"] for i in bench.engines_info()}  # the Engines table
    assert kv["es"] > 0 and kv["vi"] == 0
    assert state.paged_engines() == ["es"] and state.timeline_engines() == ["es", "vs"]
    assert state.request_choices("vi") == [] and state.request_choices(None) == []
    out = bench.engines["es"].generate([list(range(2, 30)), list(range(2, 20))],
                                       SamplingParams(max_tokens=4, temperature=0,
                                                      ignore_eos=True))
    ids = [o.request_id for o in out]
    assert state.request_choices("es")[:2] == ids[::-1]  # newest first
    html = state.page_map_html("es", highlight=ids[0])
    assert html.count("<rect") == 24
    assert "used 0 (0%)" in html and "cached 3" in html  # finished: full blocks stay cached
    assert "no paged engine" in state.page_map_html("vs")
    tl = state.timeline_html("es", ids[0])
    assert "wb-timeline" in tl and "finished" in tl and "reason=length" in tl
    assert "no timeline for request 'nope'" in state.timeline_html("es", "nope")
    assert "choose a request" in state.timeline_html("es", None)


def test_the_jupyter_metrics_view_shows_the_page_map(bench):
    from widgets.jupyter.metrics_view import MetricsView

    bench.engines["es"].generate([list(range(5, 25))], SamplingParams(max_tokens=2))
    view = MetricsView(bench, live=False)
    assert list(view.engine.options) == ["es", "vs"] and view.engine.value == "es"
    assert view.request.value == bench.engines["es"].timeline_requests()[-1]
    assert "wb-page-map" in view.page_map.value and "wb-timeline" in view.timeline.value
    view.engine.value = "vs"  # vSurge: timelines, no page map
    assert "no paged engine" in view.page_map.value
    assert view.request.options == () or view.request.value in view.request.options
