"""Load on loopback (issue 16, sec. 4): 300 concurrent streams, 30 clients that hang up after the
first chunk and 20 bad requests, all at once, against each engine behind the server.

Every good stream completes with the text the engine gives the same prompt on its own (greedy);
each bad request gets its 4xx with the error envelope; afterwards the engine holds no request, no
slot and no page, the process has no more threads than before, and RSS is back near where it was
before a round of the same mix that compiled nothing new (earlier rounds compile the batch
shapes they meet; bounded: 64 MB, measured growth a few MB). Tiny random model, bounded sizes: each engine's run takes seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psutil
import pytest

from benchmarks.common import CompileProbe
from tests.reliability_support import ENGINES, MAX_MODEL_LEN, build
from workbench.load_mix import run_mix, summarize_mix
from workbench.sampling_params import SamplingParams
from workbench.server import serve

pytestmark = pytest.mark.slow

MODEL = "tiny"
MAX_TOKENS = 8
PROMPTS = [f"item {i} is" for i in range(12)]
RSS_SLACK_MB = 64
MAX_ROUNDS = 5


def _idle(engine, timeout: float = 60.0) -> dict:
    """Wait until the engine holds no request; return its metrics."""
    deadline = time.monotonic() + timeout
    while True:
        m = engine.metrics()
        if m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy after {timeout}s: {m}")
        time.sleep(0.05)


def _settle_threads(baseline: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _check_answers(results, expected) -> None:
    good = [r for r in results if r.kind == "good"]
    failed = [r for r in good if r.error or r.status != 200]
    assert not failed, failed[:3]
    wrong = [(r.index, r.text) for r in good if r.text != expected[PROMPTS[r.index % len(PROMPTS)]]]
    assert not wrong, wrong[:3]
    assert all(r.finish_reason == "length" for r in good)
    bad = [r for r in results if r.kind == "bad"]
    assert len(bad) == 20 and all(r.status == r.expected_status and r.error_code for r in bad), \
        [(r.index, r.status, r.expected_status, r.error) for r in bad if r.status != r.expected_status]
    hung_up = [r for r in results if r.kind == "disconnect"]
    assert len(hung_up) == 30 and all(r.status == 200 and r.ttft is not None for r in hung_up)


@pytest.mark.parametrize("kind", ENGINES)
def test_mixed_load_completes_good_streams_rejects_bad_ones_and_leaves_nothing(kind):
    engine = build(kind)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    expected = {p: out.outputs[0].text for p, out in zip(PROMPTS, engine.generate(PROMPTS, params))}
    handle = serve({MODEL: engine}, stop_engines=True)
    try:
        def mix(**sizes):
            return asyncio.run(run_mix(handle.url, MODEL, PROMPTS, max_tokens=MAX_TOKENS,
                                       max_model_len=MAX_MODEL_LEN, timeout=240, **sizes))

        # Rounds of the same mix until one compiles nothing new (the shapes a batch needs depend
        # on which requests meet in it, so the first rounds still compile); that round's RSS
        # and threads are compared with the state before it.
        rounds = []
        for _ in range(MAX_ROUNDS):
            _idle(engine)
            threads0, rss0 = _settle_threads(threading.active_count()), _rss_mb()
            with CompileProbe() as compiled:
                results = mix(good=300, disconnects=30, bad=20)
            m = _idle(engine)
            threads1, rss1 = _settle_threads(threads0), _rss_mb()
            rounds.append((results, compiled.count))
            if compiled.count == 0:
                break
    finally:
        handle.stop()
        engine.close()

    assert rounds[-1][1] == 0, f"still compiling after {MAX_ROUNDS} rounds: {rounds[-1][1]}"
    for results, _ in rounds:
        _check_answers(results, expected)
    # nothing held: no request, slot or page; the disconnected ones were aborted, not finished
    assert m["num_requests_running"] == 0 and m["num_requests_waiting"] == 0
    if "num_slots_used" in m:
        assert m["num_slots_used"] == 0, m
    if kind == "esurge":
        snapshot = engine.kv_snapshot()
        assert snapshot["num_used"] == 0, snapshot
    # every request the engine saw ended (direct 12, then each round's); a hung-up stream is
    # aborted unless it finished first (a short race: vInference's batch may end before)
    finished = m["finished_by_reason"]
    assert sum(finished.values()) == len(PROMPTS) + 330 * len(rounds), finished
    assert finished["error"] == 0 and finished["abort"] >= 10, finished
    assert threads1 <= threads0, (threads0, threads1)
    assert rss1 - rss0 < RSS_SLACK_MB, (rss0, rss1)
    summary = summarize_mix(rounds[-1][0])
    print(f"{kind}: {len(rounds)} rounds; ttft p50 {summary['ttft_p50_s'] * 1e3:.0f} ms, p99 "
          f"{summary['ttft_p99_s'] * 1e3:.0f} ms; RSS {rss0:.0f} -> {rss1:.0f} MB; "
          f"threads {threads0} -> {threads1}")
