"""`Throttle`: run a view's redraw at most `max_rate` times a second, and always once more after
the last request, so the final state is drawn. Thread-safe; redraws run on the caller's thread when
due, else on a timer thread. Streaming text into a page calls it once per token; the page sees at
most 20 updates a second by default.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    def __init__(self, fn: Callable[[], None], max_rate: float = 20.0):
        if not max_rate > 0:
            raise ValueError(f"max_rate must be > 0, got {max_rate!r}")
        self.fn = fn
        self.interval = 1.0 / max_rate
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None
        self.calls = 0  # how many times fn ran

    def __call__(self) -> None:
        """Ask for a redraw: now if the last one is old enough, else once the interval is up."""
        with self._lock:
            if self._timer is not None:  # a draw is scheduled: it will show this state too
                return
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self._run()

    def flush(self) -> None:
        """Redraw now (a run ended), cancelling a pending timer."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last = time.monotonic()
        self._run()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._run()

    def _run(self) -> None:
        self.calls += 1
        self.fn()
