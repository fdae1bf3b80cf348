"""Routes by public model name, and the try-in-order loop that makes failover invisible.

`Route(name, targets, strategy)`:
- `order()`: the targets to try, healthy ones only. `failover`: config order. `least_busy`: fewest
  requests in flight per unit of weight first (nginx's weighted `least_conn`), config order on a
  tie; the others stay behind as fallbacks.

`dispatch(call, route, metrics) -> Response`: tries each target of `order()` until one answers.
A `BackendFailure` (before the first byte) is counted (errors by kind, failovers, health) and the
next target is tried; the client sees nothing of it. When no target is left: 503 with the OpenAI
envelope naming the model (429 when every backend tried was only busy), with the reasons.
An upstream's wait for its first byte is cancelled when the client disconnects (the upstream
request closes); local engines watch for the disconnect themselves (`serving.py`).
"""

from __future__ import annotations

import logging

from starlette.responses import Response

from workbench.server.errors import APIError
from workbench.server.proxy.backend import Attempt, BackendFailure, Call, Target
from workbench.server.proxy.local import LocalEngine
from workbench.server.proxy.metrics import ProxyMetrics
from workbench.server.serving import CLIENT_CLOSED
from workbench.server.streaming import ClientDisconnected, cancel_on_disconnect

logger = logging.getLogger("workbench.proxy")


class Route:
    """A public model name and its backends; see the module docstring."""

    def __init__(self, name: str, targets: list[Target], strategy: str = "failover"):
        self.name = name
        self.targets = targets
        self.strategy = strategy

    def order(self) -> list[Target]:
        healthy = [t for t in self.targets if t.backend.health.up]
        if self.strategy == "least_busy":
            healthy.sort(key=lambda t: t.backend.in_flight / t.weight)  # stable: config order
        return healthy

    def __repr__(self) -> str:
        return f"Route({self.name!r}, {[t.backend.name for t in self.targets]}, {self.strategy})"


async def _forward(call: Call, target: Target, attempt: Attempt) -> Response:
    if isinstance(target.backend, LocalEngine):
        return await target.backend.forward(call, target, attempt)
    return await cancel_on_disconnect(call.request, target.backend.forward(call, target, attempt))


async def dispatch(call: Call, route: Route, metrics: ProxyMetrics) -> Response:
    """See the module docstring."""
    targets = route.order()
    failures: list[tuple[str, BackendFailure]] = []
    for i, target in enumerate(targets):
        attempt = Attempt(call, target, metrics)
        try:
            return await _forward(call, target, attempt)
        except BackendFailure as failure:
            attempt.fail(failure.kind, failure.reason, marks_down=failure.marks_down)
            failures.append((target.backend.name, failure))
            if i + 1 < len(targets):
                attempt.series.failovers.inc()
                logger.warning("model %s: backend %s failed before the first byte (%s: %s); "
                               "trying %s", route.name, target.backend.name, failure.kind,
                               failure.reason, targets[i + 1].backend.name)
        except ClientDisconnected:
            attempt.fail("cancelled", "client disconnected")
            return Response(status_code=CLIENT_CLOSED)
        except APIError as exc:  # the client's 4xx, or the server stopping (503)
            attempt.fail("http_4xx" if exc.status < 500 else "cancelled", exc.message)
            raise
        except Exception as exc:  # a bug: a 500 for the client, logged by the error handler
            kind = "engine" if isinstance(target.backend, LocalEngine) else "stream"
            attempt.fail(kind, type(exc).__name__, marks_down=True)
            raise
        except BaseException:  # cancelled
            attempt.fail("cancelled", "cancelled")
            raise
    metrics.unavailable.labels(route.name).inc()
    raise _unavailable(route, failures)


def _unavailable(route: Route, failures: list[tuple[str, BackendFailure]]) -> APIError:
    if not failures:
        names = ", ".join(t.backend.name for t in route.targets)
        return APIError(503, f"No backend is available for model '{route.name}': every backend "
                        f"({names}) is marked down", type="server_error", code="no_backend",
                        param="model")
    reasons = "; ".join(f"{name}: {f.kind} ({f.reason})" for name, f in failures)
    if all(f.kind == "http_429" for _, f in failures):
        after = next((f.retry_after for _, f in failures if f.retry_after), "1")
        return APIError(429, f"Every backend for model '{route.name}' is busy, retry later: "
                        f"{reasons}", type="rate_limit_error", code="rate_limit_exceeded",
                        param="model", headers={"Retry-After": after})
    return APIError(503, f"No backend could serve model '{route.name}': {reasons}",
                    type="server_error", code="no_backend", param="model")
