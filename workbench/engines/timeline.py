"""Per-request event timelines of a background engine: what happened to a request, and when.
Plain Python, thread-safe (the driver records, UI and server threads read).

Events carry monotonic times (`time.monotonic()`, the clock of the metrics collector). The core
records `queued`, `first_token` and `finished` (with `reason`); schedulers add their own through
the plan (`scheduled`, `prefill_chunk` with `start`/`num_tokens`, `preempted`, `resumed`).
The last `max_requests` requests are kept, finished or not.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any


class Timeline:
    def __init__(self, max_requests: int = 1000):
        if max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {max_requests}")
        self.max_requests = max_requests
        self._events: collections.OrderedDict[str, list[dict[str, Any]]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, request_id: str, event: str, now: float | None = None, **info) -> None:
        entry = {"event": event, "time": time.monotonic() if now is None else now, **info}
        with self._lock:
            events = self._events.get(request_id)
            if events is None:
                events = self._events[request_id] = []
                while len(self._events) > self.max_requests:
                    self._events.popitem(last=False)
            events.append(entry)

    def get(self, request_id: str) -> list[dict[str, Any]]:
        """The request's events, oldest first (copies); KeyError for an unknown request."""
        with self._lock:
            if request_id not in self._events:
                raise KeyError(f"no timeline for request {request_id!r} (unknown, or older than "
                               f"the last {self.max_requests} requests)")
            return [dict(e) for e in self._events[request_id]]

    def request_ids(self) -> list[str]:
        """Requests with a timeline, oldest first."""
        with self._lock:
            return list(self._events)
