"""`Tasks`: how a view runs long work (loading, generating, benchmarking) off the kernel's thread.

    tasks = Tasks(on_error=lambda message: status.value = message)
    tasks.run(work)        # a daemon thread; an exception becomes on_error("...");
                           # on_done() (if given) runs after each task, when busy is False
    tasks.wait(timeout)    # tests and notebooks: block until the work is done

A click handler only starts a task and returns, so the notebook (or the Panel server's event
loop) is never blocked. Toolkit-agnostic: the ipywidgets views and the Panel dashboard share it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("widgets")


class Tasks:
    def __init__(self, on_error: Callable[[str], None], name: str = "view",
                 on_done: Callable[[], None] | None = None):
        self.on_error = on_error
        self.on_done = on_done  # called after every task, failed or not, once it is not busy
        self.name = name
        self._threads: list[threading.Thread] = []
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., Any], *args: Any) -> threading.Thread:
        def target():
            try:
                fn(*args)
            except Exception as e:
                logger.debug("%s task failed", self.name, exc_info=True)
                self.on_error(f"{type(e).__name__}: {e}" if not isinstance(e, ValueError)
                              else str(e))
            finally:
                with self._lock:
                    self._running.discard(threading.current_thread())
            if self.on_done is not None:
                self.on_done()

        t = threading.Thread(target=target, daemon=True, name=f"{self.name}-task")
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            self._running.add(t)
        t.start()
        return t

    @property
    def busy(self) -> bool:
        """A task is running (False already inside `on_done`)."""
        with self._lock:
            return bool(self._running)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task started so far has ended; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                return False
        return True


class Ticker:
    """Calls `fn` every `interval` seconds in a daemon thread until `stop()` (live views)."""

    def __init__(self, fn: Callable[[], None], interval: float, name: str = "ticker"):
        self.fn, self.interval = fn, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:
                logger.debug("ticker failed", exc_info=True)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
