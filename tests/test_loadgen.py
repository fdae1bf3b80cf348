"""workbench.loadgen: workload, metrics arithmetic, direct and HTTP runs, inside a running loop."""

from __future__ import annotations

import asyncio
import math

import pytest

from workbench.engines.vsurge import vSurge
from workbench.loadgen import (RequestResult, run_async, run_bench, summarize, text_prompts,
                               workload)
from workbench.server.handle import serve


def test_summarize_matches_hand_computed_metrics():
    results = [RequestResult(ttft=0.1, latency=0.5, output_tokens=5, itl=[0.1] * 4),
               RequestResult(ttft=0.3, latency=0.7, output_tokens=3, itl=[0.2, 0.2]),
               RequestResult(latency=0.1, error="HTTP 500")]
    m = summarize(results, 2.0)
    assert m["requests"] == 3 and m["failed"] == 1
    assert m["requests/s"] == 1.0 and m["output tok/s"] == 4.0
    assert m["TTFT mean (ms)"] == pytest.approx(200.0) and m["TTFT p50 (ms)"] == pytest.approx(200)
    assert m["TPOT mean (ms)"] == pytest.approx(150.0)  # (0.4/4 + 0.4/2) / 2
    assert m["ITL p50 (ms)"] == pytest.approx(100.0)
    empty = summarize([RequestResult(error="x")], 1.0)
    assert math.isnan(empty["TTFT p50 (ms)"]) and empty["output tok/s"] == 0


def test_workload_lengths_and_seeding(tiny_llama):
    a = workload(20, (5, 9), seed=3, vocab_size=100)
    assert a == workload(20, (5, 9), seed=3, vocab_size=100)
    assert all(5 <= len(p) <= 9 and all(10 <= t < 100 for t in p) for p in a)
    texts = text_prompts([10, 20], seed=1)
    assert [len(t) for t in texts] == [40, 80] and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="prompt_lens"):
        workload(3, (9, 5), vocab_size=100)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    with vSurge(tiny_llama, max_concurrent_decodes=4, max_model_len=128) as e:
        yield e


def test_direct_and_http_runs(engine):
    direct = run_bench(engine, num_requests=6, max_concurrency=3, max_tokens=5, warmup=False)
    assert direct.via == "direct" and direct.metrics["failed"] == 0
    assert [r.output_tokens for r in direct.results] == [5] * 6
    assert direct.metrics["output tok/s"] > 0 and direct.metrics["TTFT p50 (ms)"] > 0
    with serve({"tiny": engine}, stop_engines=False) as handle:
        http = run_bench(engine, url=handle.url, model="tiny", num_requests=4,
                         max_concurrency=2, max_tokens=5, warmup=True)
        bad = run_bench(engine, url=handle.url, model="nope", num_requests=2, max_tokens=2,
                        warmup=False)
    assert http.via == "http" and http.metrics["failed"] == 0 and http.warmup_s > 0
    assert [r.output_tokens for r in http.results] == [5] * 4
    assert bad.metrics["failed"] == 2 and "HTTP 404" in bad.results[0].error


def test_run_bench_inside_a_running_event_loop(engine):
    async def in_a_notebook_cell():
        return run_bench(engine, num_requests=2, max_tokens=3, warmup=False)

    result = asyncio.run(in_a_notebook_cell())
    assert result.metrics["failed"] == 0
    assert run_async(asyncio.sleep(0, result="x")) == "x"


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_requests=0), "num_requests"), (dict(max_concurrency=True), "max_concurrency"),
    (dict(request_rate=0), "request_rate"), (dict(max_tokens=-1), "max_tokens"),
])
def test_bad_settings(engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_bench(engine, **kwargs)
    with pytest.raises(ValueError, match="engine .* or a url"):
        run_bench()
    with pytest.raises(ValueError, match="model="):
        run_bench(url="http://127.0.0.1:1")
