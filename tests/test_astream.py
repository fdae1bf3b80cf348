"""`astream` (every engine, one loop in `OutputStream.aoutputs`): a consumer that stops early
aborts its request at once, as the server's client-disconnect path relies on; one that reads to
the end gets the same tokens as `generate`."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability_support import ENGINES, every_engine
from workbench.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engines():
    yield from every_engine()


@pytest.mark.parametrize("kind", ENGINES)
def test_closing_astream_early_aborts_the_request(engines, kind):
    engine = engines[kind]
    aborted = engine.metrics()["finished_by_reason"]["abort"]

    async def read_one_then_leave():
        stream = engine.astream("hello", PARAMS)
        first = await anext(stream)
        await stream.aclose()
        return first

    first = asyncio.run(read_one_then_leave())
    assert not first.finished
    deadline = time.monotonic() + 10
    while engine.metrics()["finished_by_reason"]["abort"] == aborted:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.01)
    # vInference's batch notices at its next chunk boundary; nothing stays held
    while (m := engine.metrics())["num_requests_running"] or m["num_requests_waiting"]:
        assert time.monotonic() < deadline, m
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ENGINES)
def test_astream_read_to_the_end_matches_generate(engines, kind):
    engine = engines[kind]

    async def read_all():
        return [out async for out in engine.astream("hello there", PARAMS)]

    outs = asyncio.run(read_all())
    (whole,) = engine.generate(["hello there"], PARAMS)
    assert outs[-1].finished and outs[-1].outputs[0].token_ids == whole.outputs[0].token_ids
    assert "".join(o.outputs[0].delta_text for o in outs) == whole.outputs[0].text
