"""Graceful shutdown: stop accepting, let the requests in flight finish, then stop.

`start_draining(app)` flips the app into draining: `DrainGate` answers every new request but
`GET /health` and `GET /metrics` with 503 (code "server_shutdown"; `/health` itself says
"draining"), while generations already in flight go on. `wait_drained(app, timeout)` waits until
none is left (or the timeout passes) and says whether the server drained. `ServerHandle.stop(drain=
seconds)` and `workbench serve` on SIGTERM / SIGINT use them before shutting down.
"""

from __future__ import annotations

import time
from typing import Any

from workbench.server.errors import APIError

_ALWAYS_OPEN = {"/health", "/metrics"}


def start_draining(app: Any) -> None:
    app.state.draining = True


def is_draining(app: Any) -> bool:
    return bool(getattr(app.state, "draining", False))


def num_in_flight(app: Any) -> int:
    active = getattr(app.state, "generations", None)
    return 0 if active is None else len(active)


def wait_drained(app: Any, timeout: float, interval: float = 0.05) -> bool:
    """Wait up to `timeout` seconds for the generations in flight to end; True if they did."""
    deadline = time.monotonic() + timeout
    while num_in_flight(app) and time.monotonic() < deadline:
        time.sleep(interval)
    return num_in_flight(app) == 0


class DrainGate:
    """ASGI middleware: 503 for new requests while the app drains (see the module docstring)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] not in _ALWAYS_OPEN
                and is_draining(scope["app"])):
            error = APIError(503, "The server is shutting down and accepts no new requests",
                             type="server_error", code="server_shutdown",
                             headers={"Connection": "close"})
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)
