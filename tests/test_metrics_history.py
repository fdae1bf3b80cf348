"""workbench.metrics_history: rates and interval means from snapshots, bounded buffers, the
background thread, a failing source."""

from __future__ import annotations

import threading
import time

import pytest

from workbench.metrics_history import FIELDS, MetricsHistory


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def snap(tokens=0, ttft=(0.0, 0), itl=(0.0, 0), running=0, waiting=0, kv=0.0, finished=0):
    return {"generation_tokens_total": tokens, "num_requests_running": running,
            "num_requests_waiting": waiting, "kv_cache_usage_perc": kv, "num_slots_used": running,
            "num_requests_finished": finished, "num_preemptions": 0,
            "latency_totals": {"ttft_s": {"sum": ttft[0], "count": ttft[1]},
                               "itl_s": {"sum": itl[0], "count": itl[1]}}}


def test_rates_and_interval_means():
    clock = Clock()
    state = {"e": snap()}
    h = MetricsHistory(lambda: state, interval=0.5, clock=clock)
    h.sample()
    clock.t += 0.5
    state["e"] = snap(tokens=20, ttft=(0.3, 2), itl=(1.0, 10), running=2, waiting=1, kv=0.25)
    h.sample()
    clock.t += 0.5
    state["e"] = snap(tokens=20, ttft=(0.3, 2), itl=(1.0, 10), finished=2)
    h.sample()
    cols = h.series("e")
    assert set(cols) == set(FIELDS)
    assert cols["output_tok_s"] == [None, pytest.approx(40.0), 0.0]
    assert cols["ttft_ms"] == [None, pytest.approx(150.0), None]  # 0.3 s over 2 requests
    assert cols["itl_ms"] == [None, pytest.approx(100.0), None]
    assert cols["running"] == [0, 2, 0] and cols["waiting"] == [0, 1, 0]
    assert cols["kv_usage"] == [0.0, 0.25, 0.0] and cols["finished"] == [0, 0, 2]
    assert cols["t"] == [0.0, 0.5, 1.0] and cols["seq"] == [1, 2, 3]


def test_since_returns_only_new_samples_and_the_buffer_is_bounded():
    clock = Clock()
    h = MetricsHistory(lambda: {"a": snap(), "b": snap()}, maxlen=5, clock=clock)
    for _ in range(3):
        h.sample()
        clock.t += 1
    rows, seq = h.since("a", 0)
    assert rows["seq"] == [1, 2, 3] and seq == 3
    h.sample()
    rows, seq = h.since("a", seq)
    assert rows["seq"] == [4] and seq == 4
    for _ in range(10):
        h.sample()
    assert len(h.series("a")["seq"]) == 5 and h.series("a")["seq"][-1] == 14
    assert h.since("unknown", 0)[0]["seq"] == []
    h.forget("b")
    assert h.engines() == ["a"] and h.latest("b") is None


def test_engines_coming_and_going():
    state = {"a": snap()}
    h = MetricsHistory(lambda: dict(state), clock=Clock())
    h.sample()
    state["b"] = snap(tokens=5)
    h.sample()
    assert h.series("b")["output_tok_s"] == [None]  # no previous sample of b: no rate yet
    assert h.latest("a")["seq"] == 2


def test_background_thread_samples_and_stops():
    calls = []
    h = MetricsHistory(lambda: calls.append(1) or {"e": snap()}, interval=0.02)
    h.start()
    h.start()  # idempotent
    deadline = time.monotonic() + 5
    while len(h.series("e")["seq"]) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    h.stop()
    n = len(calls)
    assert n >= 5 and not h.running
    time.sleep(0.1)
    assert len(calls) == n
    assert not any(t.name == "metrics-history" for t in threading.enumerate())


def test_a_failing_source_is_survived(caplog):
    state = {"fail": True}

    def source():
        if state["fail"]:
            raise RuntimeError("engine closed")
        return {"e": snap()}

    h = MetricsHistory(source, clock=Clock())
    h.sample()
    assert h.engines() == [] and "metrics source failed" in caplog.text
    state["fail"] = False
    h.sample()
    assert h.series("e")["seq"] == [1]  # a failed poll takes no sequence number


@pytest.mark.parametrize("kwargs", [dict(interval=0), dict(interval=-1), dict(maxlen=1),
                                    dict(maxlen=2.5)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MetricsHistory(dict, **kwargs)
