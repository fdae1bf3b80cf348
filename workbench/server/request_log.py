"""`RequestLog`: a pure ASGI middleware that records the last HTTP requests a server answered.

Each finished request appends one dict to the given `collections.deque` (bounded by its `maxlen`):
`{"time": epoch seconds at arrival, "method", "path", "status" (None if the client went away
before a response started), "duration_ms" (arrival to the last body byte), "client": "host:port"}`.
It wraps the whole app, so requests refused by the API key or the body limit are logged too. The
UI's Server tab shows the log; nothing here reads request bodies.
"""

from __future__ import annotations

import collections
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestLog:
    def __init__(self, app: ASGIApp, log: collections.deque):
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival, t0 = time.time(), time.perf_counter()
        status: list[int] = []

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client")
            self.log.append({
                "time": arrival, "method": scope.get("method"), "path": scope.get("path"),
                "status": status[0] if status else None,
                "duration_ms": 1e3 * (time.perf_counter() - t0),
                "client": f"{client[0]}:{client[1]}" if client else None,
            })
