"""Tests for workbench.metrics (plain Python, no jax)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from workbench.metrics import LATENCY_BUCKETS, MetricsCollector, render_many


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample(fams, family, suffix="", **labels):
    """Value of the one sample ``family+suffix`` whose labels include ``labels``."""
    hits = [s.value for s in fams[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (family, suffix, labels, hits)
    return hits[0]


def bucket(fams, family, le, **labels):
    return sample(fams, family, "_bucket", le=le, **labels)


def drive_timeline(m: MetricsCollector):
    # Request "a": arrive 100.000, scheduled 100.010, first token 100.013,
    # 4 tokens at 100.033 (ITL 5 ms x4), 2 tokens at 100.053 (ITL 10 ms x2), stop at 100.060.
    m.on_arrival("a", 7, now=100.000)
    m.on_scheduled("a", now=100.010)
    m.on_first_token("a", now=100.013)
    m.on_tokens("a", 4, now=100.033)
    m.on_tokens("a", 2, now=100.053)
    m.on_finish("a", "stop", now=100.060)
    # Request "b": arrive 101.0, scheduled 101.5, first token 101.7, 1 token at 102.7, length at 103.0.
    m.on_arrival("b", 3, now=101.0)
    m.on_scheduled("b", now=101.5)
    m.on_first_token("b", now=101.7)
    m.on_tokens("b", 1, now=102.7)
    m.on_finish("b", "length", now=103.0)


def test_snapshot_exact_numbers():
    clock = FakeClock(95.0)
    m = MetricsCollector("vsurge", "tiny", clock=clock)
    drive_timeline(m)
    m.set_running(2)
    m.set_waiting(3)
    m.set_slots(2, 8)
    m.set_kv_cache_usage(0.25)
    m.on_prefix_cache(10, 4)
    s = m.snapshot(now=103.0)

    assert s["engine"] == "vsurge" and s["model_name"] == "tiny"
    assert (s["num_requests_running"], s["num_requests_waiting"]) == (2, 3)
    assert (s["num_slots_used"], s["num_slots_total"]) == (2, 8)
    assert s["kv_cache_usage_perc"] == 0.25
    assert s["num_requests_finished"] == 2
    assert s["finished_by_reason"] == {"stop": 1, "length": 1, "abort": 0, "error": 0}
    assert s["prompt_tokens_total"] == 10
    assert s["generation_tokens_total"] == 7 + 2
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.4)
    assert s["uptime_s"] == pytest.approx(8.0)
    # All 9 tokens fall in (93, 103]; span = min(10, uptime 8) = 8 s.
    assert s["generation_tokens_per_s"] == pytest.approx(9 / 8)

    assert s["ttft_s"]["count"] == 2
    assert s["ttft_s"]["mean"] == pytest.approx((0.013 + 0.7) / 2)
    assert s["ttft_s"]["p50"] == pytest.approx((0.013 + 0.7) / 2)
    assert s["ttft_s"]["p90"] == pytest.approx(0.013 + 0.9 * (0.7 - 0.013))
    assert s["queue_s"]["mean"] == pytest.approx((0.010 + 0.5) / 2)
    assert s["e2e_s"]["mean"] == pytest.approx((0.060 + 2.0) / 2)
    # Per-request mean ITL: a = 0.040 s / 6 tokens, b = 1.0 s / 1 token.
    assert s["itl_s"]["count"] == 2
    assert s["itl_s"]["mean"] == pytest.approx((0.04 / 6 + 1.0) / 2)
    assert s["prefill_s"]["mean"] == pytest.approx((0.003 + 0.2) / 2)
    assert s["decode_s"]["mean"] == pytest.approx((0.047 + 1.3) / 2)

    a, b = s["requests"]
    assert a["request_id"] == "a" and a["finished_reason"] == "stop"
    assert (a["prompt_tokens"], a["generation_tokens"]) == (7, 7)
    assert a["ttft_s"] == pytest.approx(0.013)
    assert a["e2e_s"] == pytest.approx(0.060)
    assert a["queue_s"] == pytest.approx(0.010)
    assert a["mean_itl_s"] == pytest.approx(0.04 / 6)
    assert b["request_id"] == "b" and b["generation_tokens"] == 2 and b["finished_reason"] == "length"


def test_prometheus_sums_counts_and_buckets():
    m = MetricsCollector("vsurge", "tiny", clock=FakeClock(95.0))
    drive_timeline(m)
    fams = families(m.render())
    lab = {"model_name": "tiny", "engine": "vsurge"}
    p = "workbench:"

    ttft = p + "time_to_first_token_seconds"
    assert sample(fams, ttft, "_count", **lab) == 2
    assert sample(fams, ttft, "_sum", **lab) == pytest.approx(0.713)
    # TTFTs 13 ms and 700 ms: the buckets resolve milliseconds.
    assert bucket(fams, ttft, "0.01", **lab) == 0
    assert bucket(fams, ttft, "0.015", **lab) == 1
    assert bucket(fams, ttft, "0.75", **lab) == 2

    itl = p + "inter_token_latency_seconds"
    assert sample(fams, itl, "_count", **lab) == 4 + 2 + 1
    assert sample(fams, itl, "_sum", **lab) == pytest.approx(0.040 + 1.0)
    assert bucket(fams, itl, "0.0025", **lab) == 0
    assert bucket(fams, itl, "0.005", **lab) == 4
    assert bucket(fams, itl, "0.01", **lab) == 6
    assert bucket(fams, itl, "1.0", **lab) == 7

    for name, total in [("e2e_request_latency_seconds", 2.060), ("request_queue_time_seconds", 0.510),
                        ("request_prefill_time_seconds", 0.203), ("request_decode_time_seconds", 1.347)]:
        assert sample(fams, p + name, "_count", **lab) == 2
        assert sample(fams, p + name, "_sum", **lab) == pytest.approx(total)

    assert sample(fams, p + "request_prompt_tokens", "_sum", **lab) == 10
    assert sample(fams, p + "request_generation_tokens", "_sum", **lab) == 9
    # Counters: family name without _total, sample with it.
    assert sample(fams, p + "prompt_tokens", "_total", **lab) == 10
    assert sample(fams, p + "generation_tokens", "_total", **lab) == 9
    succ = p + "request_success"
    assert sample(fams, succ, "_total", finished_reason="stop", **lab) == 1
    assert sample(fams, succ, "_total", finished_reason="length", **lab) == 1
    assert sample(fams, succ, "_total", finished_reason="abort", **lab) == 0
    for g in ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "num_slots_used",
              "num_slots_total"]:
        assert fams[p + g].type == "gauge"
    for c in ["prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "num_requests_rejected"]:
        assert fams[p + c].type == "counter"


def test_3ms_ttft_not_in_lowest_bucket():
    m = MetricsCollector("esurge", "tiny")
    m.on_arrival("r", 5, now=10.0)
    m.on_first_token("r", now=10.003)
    fams = families(m.render())
    ttft = "workbench:time_to_first_token_seconds"
    assert bucket(fams, ttft, str(LATENCY_BUCKETS[0])) == 0
    assert bucket(fams, ttft, "0.0025") == 0
    assert bucket(fams, ttft, "0.005") == 1
    assert bucket(fams, ttft, "+Inf") == 1


def test_two_collectors_do_not_collide_and_render_many_merges():
    a = MetricsCollector("vsurge", "same-model")
    b = MetricsCollector("esurge", "same-model")
    assert a.registry is not b.registry
    a.on_arrival(1, 4, now=0.0)
    a.on_first_token(1, now=0.002)
    a.on_finish(1, "stop", now=0.01)
    b.on_arrival(1, 6, now=0.0)
    b.on_rejected()
    text = render_many([a, b])
    decoded = text.decode()
    fams = families(text)  # parses without error
    # One HELP/TYPE per family even though two collectors contribute.
    help_lines = [ln for ln in decoded.splitlines() if ln.startswith("# HELP ")]
    type_lines = [ln for ln in decoded.splitlines() if ln.startswith("# TYPE ")]
    assert len(help_lines) == len(set(help_lines)) and len(type_lines) == len(set(type_lines))
    assert len(type_lines) == len(families(a.render()))
    p = "workbench:"
    assert sample(fams, p + "prompt_tokens", "_total", engine="vsurge") == 4
    assert sample(fams, p + "prompt_tokens", "_total", engine="esurge") == 6
    assert sample(fams, p + "num_requests_rejected", "_total", engine="esurge") == 1
    assert sample(fams, p + "time_to_first_token_seconds", "_count", engine="vsurge") == 1
    assert sample(fams, p + "time_to_first_token_seconds", "_count", engine="esurge") == 0
    engines = {s.labels.get("engine") for f in fams.values() for s in f.samples}
    assert engines == {"vsurge", "esurge"}


def test_shared_registry():
    reg = CollectorRegistry()
    a = MetricsCollector("vsurge", "m", registry=reg)
    b = MetricsCollector("esurge", "m", registry=reg)
    assert a.registry is b.registry is reg
    a.on_arrival("x", 2, now=0.0)
    b.on_arrival("x", 3, now=0.0)
    fams = families(a.render())
    assert sample(fams, "workbench:prompt_tokens", "_total", engine="vsurge") == 2
    assert sample(fams, "workbench:prompt_tokens", "_total", engine="esurge") == 3
    families(render_many([a, b]))  # rendered once, no duplicate series
    with pytest.raises(ValueError, match="distinct engine name"):
        MetricsCollector("vsurge", "m", registry=reg)


def test_prefix_validation_and_custom_prefix():
    m = MetricsCollector("vinference", "m", prefix="wb_test:")
    assert "wb_test:num_requests_running" in families(m.render())
    for bad in ["1abc", "work-bench:", "a b", "wb.", "__x"]:
        with pytest.raises(ValueError, match="prefix"):
            MetricsCollector("vinference", "m", prefix=bad)


def test_bad_finished_reason_raises():
    m = MetricsCollector("vsurge", "m")
    m.on_arrival("r", 1, now=0.0)
    with pytest.raises(ValueError, match="finished_reason"):
        m.on_finish("r", "eos", now=1.0)
    with pytest.raises(ValueError):
        m.on_finish("never-seen", "cancelled")
    # The request is still tracked and can finish normally.
    m.on_finish("r", "abort", now=1.0)
    assert m.snapshot(now=1.0)["finished_by_reason"]["abort"] == 1


def test_unknown_request_ids_are_noops():
    m = MetricsCollector("vsurge", "m")
    m.on_scheduled("ghost", now=1.0)
    m.on_first_token("ghost", now=1.0)
    m.on_tokens("ghost", 3, now=1.0)
    m.on_preemption("ghost")
    m.on_finish("ghost", "abort", now=2.0)
    # A late abort after a normal finish is also a no-op.
    m.on_arrival("r", 2, now=0.0)
    m.on_finish("r", "stop", now=0.5)
    m.on_finish("r", "abort", now=0.6)
    s = m.snapshot(now=1.0)
    assert s["num_requests_finished"] == 1
    assert s["finished_by_reason"] == {"stop": 1, "length": 0, "abort": 0, "error": 0}
    assert s["generation_tokens_total"] == 0 and s["num_preemptions"] == 0


def test_abort_before_first_token_and_preemption():
    m = MetricsCollector("vsurge", "m")
    m.on_arrival("r", 4, now=0.0)
    m.on_scheduled("r", now=0.1)
    m.on_preemption("r")
    m.on_scheduled("r", now=0.5)  # re-scheduling does not change the queue time
    m.on_finish("r", "abort", now=1.0)
    s = m.snapshot(now=1.0)
    assert s["queue_s"]["mean"] == pytest.approx(0.1)
    assert s["ttft_s"]["count"] == 0 and s["ttft_s"]["p99"] is None
    assert s["e2e_s"]["mean"] == pytest.approx(1.0)
    assert s["num_preemptions"] == 1
    assert s["requests"][0]["ttft_s"] is None and s["requests"][0]["preemptions"] == 1
    fams = families(m.render())
    assert sample(fams, "workbench:request_decode_time_seconds", "_count") == 0
    assert sample(fams, "workbench:num_preemptions", "_total") == 1


def test_on_tokens_without_first_token_records_ttft():
    m = MetricsCollector("vinference", "m")
    m.on_arrival("r", 2, now=0.0)
    m.on_tokens("r", 3, now=0.02)  # first chunk: TTFT, no ITL samples
    m.on_tokens("r", 1, now=0.03)
    m.on_finish("r", "length", now=0.03)
    s = m.snapshot(now=0.03)
    assert s["ttft_s"]["mean"] == pytest.approx(0.02)
    assert s["generation_tokens_total"] == 4
    assert s["requests"][0]["mean_itl_s"] == pytest.approx(0.01)
    fams = families(m.render())
    assert sample(fams, "workbench:inter_token_latency_seconds", "_count") == 1


def test_windows_rate_and_reset():
    clock = FakeClock(0.0)
    m = MetricsCollector("vsurge", "m", window=3, clock=clock)
    for i in range(5):
        m.on_arrival(i, 1, now=float(i))
        m.on_first_token(i, now=i + 0.001 * (i + 1))
        m.on_finish(i, "stop", now=i + 0.5)
    s = m.snapshot(now=30.0)
    assert s["ttft_s"]["count"] == 3
    assert s["ttft_s"]["mean"] == pytest.approx(0.004)  # last three: 3, 4, 5 ms
    assert s["generation_tokens_per_s"] == 0.0  # all tokens older than 10 s
    assert m.snapshot(now=5.0)["generation_tokens_per_s"] == pytest.approx(5 / 5.0)
    assert m.snapshot(now=14.0)["generation_tokens_per_s"] == pytest.approx(1 / 10.0)
    m.reset()
    s = m.snapshot(now=30.0)
    assert s["ttft_s"]["count"] == 0 and s["requests"] == []
    assert s["num_requests_finished"] == 5 and s["generation_tokens_total"] == 5
    fams = families(m.render())
    assert sample(fams, "workbench:time_to_first_token_seconds", "_count") == 5


def test_recent_requests_capped_at_50():
    m = MetricsCollector("vsurge", "m")
    for i in range(60):
        m.on_arrival(i, 1, now=0.0)
        m.on_finish(i, "stop", now=1.0)
    reqs = m.snapshot(now=1.0)["requests"]
    assert len(reqs) == 50 and reqs[0]["request_id"] == 10 and reqs[-1]["request_id"] == 59


def test_gauge_and_arg_validation():
    m = MetricsCollector("vsurge", "m")
    m.set_kv_cache_usage(1.2)
    assert m.snapshot()["kv_cache_usage_perc"] == 1.0
    with pytest.raises(ValueError):
        m.set_running(-1)
    with pytest.raises(ValueError):
        m.on_prefix_cache(2, 3)
    with pytest.raises(ValueError):
        MetricsCollector("vsurge", "m", window=0)


def test_thread_safety_totals_add_up():
    m = MetricsCollector("esurge", "m")
    n_threads, per_thread = 8, 200
    start = threading.Barrier(n_threads + 1)
    stop_reading = threading.Event()

    def worker(k):
        start.wait()
        for i in range(per_thread):
            rid = (k, i)
            m.on_arrival(rid, 3)
            m.on_scheduled(rid)
            m.on_first_token(rid)
            m.on_tokens(rid, 2)
            m.on_prefix_cache(3, 1)
            m.on_finish(rid, ("stop", "length", "abort")[i % 3])

    def reader():
        start.wait()
        while not stop_reading.is_set():
            m.snapshot()
            families(m.render())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    rt = threading.Thread(target=reader)
    for t in threads + [rt]:
        t.start()
    for t in threads:
        t.join()
    stop_reading.set()
    rt.join()

    total = n_threads * per_thread
    s = m.snapshot()
    assert s["num_requests_finished"] == total
    assert s["prompt_tokens_total"] == 3 * total
    assert s["generation_tokens_total"] == 3 * total
    assert s["num_requests_tracked"] == 0
    assert sum(s["finished_by_reason"].values()) == total
    fams = families(m.render())
    assert sample(fams, "workbench:generation_tokens", "_total") == 3 * total
    assert sample(fams, "workbench:prefix_cache_hits", "_total") == total
    assert sample(fams, "workbench:e2e_request_latency_seconds", "_count") == total
    assert sample(fams, "workbench:inter_token_latency_seconds", "_count") == 2 * total


def test_module_does_not_import_jax():
    root = Path(__file__).resolve().parents[1]
    code = "import sys, workbench.metrics; assert 'jax' not in sys.modules, 'jax imported'"
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_iteration_tokens_histogram():
    m = MetricsCollector("esurge", "m")
    for n in (1, 40, 40, 300):
        m.on_iteration(n)
    fams = families(m.render())
    lab = dict(model_name="m", engine="esurge")
    assert sample(fams, "workbench:iteration_tokens_total", "_count", **lab) == 4
    assert sample(fams, "workbench:iteration_tokens_total", "_sum", **lab) == 381
    assert sample(fams, "workbench:iteration_tokens_total", "_bucket", le="64.0", **lab) == 3
    s = m.snapshot()
    assert (s["iterations_total"], s["iteration_tokens_total"]) == (4, 381)
    with pytest.raises(ValueError, match="num_tokens"):
        m.on_iteration(-1)


def test_inference_time_and_request_params_histograms():
    clock = FakeClock()
    m = MetricsCollector("vsurge", "m", clock=clock)
    m.on_arrival("a", 5, n=2, max_tokens=100)
    clock.t = 1.0
    m.on_scheduled("a")
    clock.t = 1.5
    m.on_first_token("a")
    clock.t = 3.25
    m.on_finish("a", "length")
    m.on_arrival("b", 5)  # parameters not given: not observed
    m.on_finish("b", "abort")
    fams = families(m.render())
    lab = dict(model_name="m", engine="vsurge")
    assert sample(fams, "workbench:request_inference_time_seconds", "_sum", **lab) == 2.25
    assert sample(fams, "workbench:request_inference_time_seconds", "_count", **lab) == 1
    assert sample(fams, "workbench:request_params_n", "_count", **lab) == 1
    assert bucket(fams, "workbench:request_params_n", "1.0", **lab) == 0
    assert bucket(fams, "workbench:request_params_n", "2.0", **lab) == 1
    assert sample(fams, "workbench:request_params_max_tokens", "_sum", **lab) == 100
    with pytest.raises(ValueError, match="max_tokens"):
        m.on_arrival("c", 1, max_tokens=-1)
