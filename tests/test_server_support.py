"""Helpers shared by the server tests (this module has no tests of its own).

One embedded model per test process (`embedded_model()`), engines built on it with a single
prefill bucket for short prompts so the tests compile few shapes, and stub engines whose `astream`
fails the way a real engine can (overloaded queue, closed engine, a bug).
"""

from __future__ import annotations

import functools
import threading
import time

from workbench.engines.types import EngineError, EngineOverloadedError
from workbench.engines.vinference import vInference
from workbench.loading.loader import load_model

MAX_MODEL_LEN = 1024
# Every short test prompt (chat template included) pads to 32 tokens: one prefill shape.
PREFILL_BUCKETS = (32, MAX_MODEL_LEN)


@functools.cache
def embedded_model():
    return load_model("embedded", progress=False)


def make_engine(cls=vInference, **kwargs) -> vInference:
    kwargs.setdefault("max_model_len", MAX_MODEL_LEN)
    kwargs.setdefault("prefill_buckets", PREFILL_BUCKETS)
    return cls(embedded_model(), **kwargs)


class SecondEngine(vInference):  # noqa: N801
    """A second vInference with its own metric label, to serve two engines at once."""

    engine_name = "vinference-b"


class _FailingEngine(vInference):  # noqa: N801
    error: BaseException = RuntimeError("stub")

    async def astream(self, prompt, sampling_params=None, **kwargs):
        raise self.error
        yield  # pragma: no cover - makes this an async generator


class OverloadedEngine(_FailingEngine):
    engine_name = "overloaded"
    error = EngineOverloadedError("waiting queue is full (32 requests)")


class ClosedEngine(_FailingEngine):
    engine_name = "closed"
    error = EngineError("engine is closed")


class BuggyEngine(_FailingEngine):
    engine_name = "buggy"
    error = ZeroDivisionError("a bug in the engine")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}
