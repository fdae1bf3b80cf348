"""Bounded admission behind the server: vInference batches waiting requests on one worker thread
(`BatchQueue`), every engine refuses past its `max_waiting` with `EngineOverloadedError`, which
the server answers 429 with `Retry-After`; what was admitted completes with the right tokens."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from tests.reliability_support import ENGINES, build
from workbench.engines.types import EngineOverloadedError
from workbench.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
PROMPTS = [f"prompt number {i}" for i in range(12)]


async def _collect(engine, prompt):
    outs = [out async for out in engine.astream(prompt, GREEDY)]
    return outs[-1]


def test_vinference_batches_waiting_requests_on_one_thread_and_bounds_its_queue():
    eng = build("vinference", max_waiting=3)
    expected = [o.outputs[0].token_ids for o in eng.generate(PROMPTS, GREEDY)]
    sizes = []
    run = eng._queue._run_batch

    def counting(requests):
        sizes.append(len(requests))
        return run(requests)

    eng._queue._run_batch = counting
    threads_before = threading.active_count()

    async def burst():
        results = await asyncio.gather(*[_collect(eng, p) for p in PROMPTS],
                                       return_exceptions=True)
        return results, threading.active_count()

    try:
        results, threads_during = asyncio.run(burst())
        rejected = [r for r in results if isinstance(r, EngineOverloadedError)]
        done = [(i, r) for i, r in enumerate(results) if not isinstance(r, Exception)]
        assert rejected and done, results
        assert len(rejected) + len(done) == len(PROMPTS)
        for i, out in done:
            assert out.outputs[0].token_ids == expected[i]
        assert sum(sizes) == len(done) and max(sizes) > 1, sizes  # batched, not one by one
        assert threads_during <= threads_before + 1  # one worker, not a thread per request
        assert eng.metrics()["num_requests_rejected"] == len(rejected)
    finally:
        eng.close()
    assert not eng.running


@pytest.mark.parametrize("kind", ENGINES)
def test_the_server_answers_429_with_retry_after_past_the_waiting_queue(kind):
    from workbench.server.app import create_app

    limits = {"vinference": {"max_waiting": 2}, "vsurge": {"max_waiting": 2},
              "esurge": {"max_waiting": 2}}[kind]
    eng = build(kind, **limits)
    app = create_app({"m": eng})

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*[
                client.post("/v1/completions", json={"model": "m", "prompt": p, "max_tokens": 8,
                                                      "temperature": 0, "ignore_eos": True},
                            timeout=120) for p in PROMPTS])

    try:
        eng.start()
        responses = asyncio.run(burst())
    finally:
        eng.close()
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
