"""Graceful shutdown: `ServerHandle.stop(drain=...)` stops accepting (503, /health "draining")
while the requests in flight finish; SIGTERM in `workbench serve` starts the same."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from tests.reliability_support import build
from workbench.server import serve
from workbench.server.cli import _on_sigterm

pytestmark = pytest.mark.slow


class SlowRunner:
    """Delegates to `inner`; each step's tokens come 50 ms late, so a request stays in flight."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fetch(self, handle):
        time.sleep(0.05)
        return self.inner.fetch(handle)


def test_stop_with_drain_lets_the_requests_in_flight_finish_and_refuses_new_ones():
    eng = build("vsurge")
    eng.core.runner = SlowRunner(eng.core.runner)
    handle = serve({"m": eng}, stop_engines=True)
    body = {"model": "m", "prompt": "hello", "max_tokens": 50, "temperature": 0,
            "ignore_eos": True, "stream": True}
    stopped = {}
    try:
        with httpx.stream("POST", f"{handle.url}/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            stopper = threading.Thread(target=lambda: stopped.setdefault(
                "drained", handle.stop(drain=60)))
            stopper.start()
            deadline = time.monotonic() + 10
            while not getattr(handle.app.state, "draining", False) and time.monotonic() < deadline:
                time.sleep(0.01)
            health = httpx.get(f"{handle.url}/health", timeout=30)
            refused = httpx.post(f"{handle.url}/v1/completions", timeout=30,
                                 json={**body, "stream": False, "max_tokens": 2})
            rest = [first] + [line for line in lines if line.startswith("data:")]
        stopper.join(60)
    finally:
        handle.stop()
        eng.close()
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutdown"
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2].replace(" ", "")
    assert not any('"error"' in line for line in rest)
    assert stopped["drained"] is True and not handle.running


def test_sigterm_calls_the_stop_callback_in_workbench_serve():
    called = threading.Event()
    restore = _on_sigterm(called.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert called.wait(5)
    finally:
        restore()
