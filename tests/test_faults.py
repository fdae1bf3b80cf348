"""A fault stays with its request, in every engine: injected faults (a runner that raises on its
Nth step, a request whose inputs cannot be prepared) fail the requests they touch with
finish_reason "error" / `RequestFailedError`, and every other request completes with the same
tokens as without the fault; the engine serves the next requests."""

from __future__ import annotations

import pytest

from tests.reliability_support import ENGINES, build
from workbench.engines.types import RequestFailedError
from workbench.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = ["hello world", "the quick brown fox", "a b c", "jumps over"]
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


class FaultyRunner:
    """Delegates to `inner`; its `method` raises on the `at`-th call (0-based), once, or on
    every call when `at` is None."""

    def __init__(self, inner, method: str, at: int | None):
        self.inner, self.method, self.at, self.calls = inner, method, at, 0

    def __getattr__(self, name):
        value = getattr(self.inner, name)
        if name != self.method:
            return value

        def faulty(*args, **kwargs):
            self.calls += 1
            if self.at is None or self.calls - 1 == self.at:
                raise RuntimeError("injected device fault")
            return value(*args, **kwargs)
        return faulty


def _tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    eng = build(request.param)
    eng.expected = _tokens(eng.generate(PROMPTS, GREEDY))  # the tokens without any fault
    yield eng
    eng.close()


def _inject(engine, method: str, at: int):
    """Wrap the object the engine's steps run on (the core's runner, or vInference's)."""
    if engine.engine_name == "vinference":
        engine.runner = FaultyRunner(engine.runner, method or "decode_loop", at)
        return lambda: setattr(engine, "runner", engine.runner.inner)
    engine.core.runner = FaultyRunner(engine.core.runner, method or "execute", at)
    return lambda: setattr(engine.core, "runner", engine.core.runner.inner)


def test_a_failed_step_fails_its_requests_and_the_others_and_next_complete(engine):
    restore = _inject(engine, None, at=1)
    try:
        # vInference runs 4 rows per batch: the victims fill the first batch, PROMPTS the second.
        # Background engines admit what fits (4 slots / sequences): the victims, PROMPTS wait.
        victims = [f"victim {i}" for i in range(4)]
        long = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        outs = engine.generate(victims + PROMPTS, [long] * 4 + [GREEDY] * 4)
    finally:
        restore()
    reasons = [o.outputs[0].finish_reason for o in outs]
    assert "error" in reasons[:4], reasons
    for out, want in zip(outs[4:], engine.expected):
        if out.outputs[0].finish_reason != "error":  # not in the failed step
            assert out.outputs[0].token_ids == want
    assert reasons[4:] == ["length"] * 4, reasons  # PROMPTS were not in the failed step
    assert _tokens(engine.generate(PROMPTS, GREEDY)) == engine.expected  # it serves on
    with pytest.raises(RequestFailedError, match="injected device fault"):
        restore = _inject(engine, None, at=0)
        try:
            list(engine.stream("hello world", GREEDY))
        finally:
            restore()
    assert _tokens(engine.generate(PROMPTS, GREEDY)) == engine.expected
    if engine.engine_name != "vinference":
        assert engine.failure is None and engine.core.num_faults == 2


def test_a_request_whose_inputs_cannot_be_prepared_fails_alone(engine):
    target = engine if engine.engine_name == "vinference" else engine.core.runner
    real = target.prepare

    def prepare(req):
        if req.prompt_ids == engine.tokenizer.encode("a b c"):
            raise OverflowError("Python integer out of bounds for int32 (injected)")
        return real(req)

    errors = engine.metrics()["finished_by_reason"]["error"]
    target.prepare = prepare
    try:
        outs = engine.generate(PROMPTS, GREEDY)
        with pytest.raises(RequestFailedError, match="preparing its inputs failed: Overflow"):
            list(engine.stream("a b c", GREEDY))
    finally:
        del target.prepare
    assert [o.outputs[0].finish_reason for o in outs] == ["length", "length", "error", "length"]
    assert engine.metrics()["finished_by_reason"]["error"] == errors + 2
    for i in (0, 1, 3):
        assert outs[i].outputs[0].token_ids == engine.expected[i]
    assert _tokens(engine.generate(PROMPTS, GREEDY)) == engine.expected


# ---- behind the server ---------------------------------------------------------------------------
def test_a_dead_engine_makes_health_503_and_requests_fail_fast():
    from fastapi.testclient import TestClient

    from workbench.engines.engine_core import MAX_CONSECUTIVE_FAULTS
    from workbench.server.app import create_app

    eng = build("vsurge")
    body = {"model": "vs", "prompt": "hello", "max_tokens": 2}
    try:
        with TestClient(create_app({"vs": eng})) as client:
            assert client.post("/v1/completions", json=body).status_code == 200
            assert client.get("/health").json() == {"status": "ok"}
            text = client.get("/metrics").text
            assert 'workbench:engine_healthy{model_name="tiny",engine="vsurge"} 1' in text
            assert "workbench:process_resident_memory_bytes " in text
            kv = [line for line in text.splitlines()
                  if line.startswith("workbench:kv_cache_reserved_bytes{")]
            assert kv and int(kv[0].split()[-1]) == eng.kv_cache_bytes() > 0

            eng.core.runner = FaultyRunner(eng.core.runner, "execute", at=None)
            for _ in range(MAX_CONSECUTIVE_FAULTS):
                r = client.post("/v1/completions", json=body)
                assert r.status_code == 503 and "device step failed" in r.text, r.text
            r = client.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "unhealthy", r.text
            assert "in a row failed" in r.json()["engines"]["vs"]
            assert 'engine="vsurge"} 0' in client.get("/metrics").text
            r = client.post("/v1/completions", json=body)  # fails fast: no driver restart
            assert r.status_code == 503 and "cannot recover" in r.json()["error"]["message"]
            assert not eng.running
    finally:
        eng.close()
