"""What every backend shares: the `Backend` interface, one request's `Call`, one try's `Attempt`,
and `BackendFailure`, the error that makes the router try the next backend.

Contract of `Backend.forward(call, target, attempt) -> Response`:
- raise `BackendFailure` for a failure before anything was sent to the client (connect error,
  timeout, 5xx, 429, a broken or malformed first event); the client sees nothing of it. The router
  records it on `attempt` and tries the next backend.
- raise `APIError` for an answer the client must get as is (a 400 from a local engine);
  `APIError(503, code="server_shutdown")` when the server is stopping.
- else return the response, and finish `attempt` exactly once: at once for a complete response
  (`succeed()`, or `fail("http_4xx", ...)` for a passed-through 4xx), at the end of the stream for
  a streamed one (`first_text()` when the first event with text goes out). A client that goes away
  is `fail("cancelled")`.
- `probe() -> bool` answers the health check; `start()`/`stop()` run on the app's event loop.

`Target` is one entry of a route: a backend, the model name to send it, its timeouts, its weight.
Several targets (routes) may share one backend (one upstream server, one connection pool).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from workbench.server.proxy.health import BackendHealth
from workbench.server.proxy.metrics import ProxyMetrics
from workbench.server.proxy.spec import Timeouts

BACKEND_HEADER = "x-workbench-backend"  # the response header naming the backend that answered


class BackendFailure(Exception):
    """A backend failed before the first byte reached the client (see the module docstring).

    `kind` is one of `metrics.ERROR_KINDS`; `marks_down` counts it toward marking the backend
    down (a 429 does not: the backend is alive, only busy)."""

    def __init__(self, kind: str, reason: str, *, marks_down: bool = True,
                 retry_after: str | None = None):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.marks_down = marks_down
        self.retry_after = retry_after


@dataclasses.dataclass
class Call:
    """One client request to the proxy, as parsed once at the edge."""

    request: Request
    route: str                 # the public model name
    endpoint: str              # "completions" | "chat/completions"
    body: dict[str, Any]       # the client's JSON body, untouched
    stream: bool
    arrival: float = dataclasses.field(default_factory=time.perf_counter)


class Backend(abc.ABC):
    """A local engine or an upstream server; see the module docstring."""

    def __init__(self, name: str, health: BackendHealth):
        self.name = name
        self.health = health
        self.in_flight = 0  # attempts not finished, across every route (for least_busy)

    @abc.abstractmethod
    async def forward(self, call: Call, target: Target, attempt: Attempt) -> Response:
        """Send `call` to this backend; see the module docstring."""

    @abc.abstractmethod
    async def probe(self) -> bool:
        """True when the backend answers its health check."""

    async def start(self) -> None:
        """Acquire what serving needs (on the app's event loop)."""

    async def stop(self) -> None:
        """Release it."""


@dataclasses.dataclass(frozen=True)
class Target:
    backend: Backend
    model: str | None          # the name sent upstream (None: local, served as the route name)
    timeouts: Timeouts
    weight: float = 1.0


class Attempt:
    """One try of one backend for one call: in-flight count, latency, TTFT, errors, health."""

    __slots__ = ("call", "target", "series", "_done", "_ttft_seen")

    def __init__(self, call: Call, target: Target, metrics: ProxyMetrics):
        self.call = call
        self.target = target
        self.series = metrics.series(call.route, target.backend.name)
        self._done = False
        self._ttft_seen = False
        target.backend.in_flight += 1
        self.series.requests.inc()
        self.series.in_flight.inc()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def wants_ttft(self) -> bool:
        """No event with text has gone out yet."""
        return not self._ttft_seen

    def first_text(self) -> None:
        if not self._ttft_seen:
            self._ttft_seen = True
            self.series.ttft.observe(time.perf_counter() - self.call.arrival)

    def succeed(self) -> None:
        if self._end():
            self.series.latency.observe(time.perf_counter() - self.call.arrival)
            self.target.backend.health.record_success()

    def fail(self, kind: str, reason: str = "", *, marks_down: bool = False) -> None:
        if self._end():
            self.series.errors[kind].inc()
            if marks_down:
                self.target.backend.health.record_failure(f"{kind}: {reason}" if reason else kind)

    def _end(self) -> bool:
        if self._done:
            return False
        self._done = True
        self.target.backend.in_flight -= 1
        self.series.in_flight.dec()
        return True
