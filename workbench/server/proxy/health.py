"""Whether a backend may be tried: up/down with failure counting and a cooldown (nginx's
`max_fails` / `fail_timeout`, LiteLLM's cooldowns), and the background probe loop.

`BackendHealth(max_fails, cooldown, clock)` (plain Python, used on one event loop):
- `up`: requests may be routed to it. A new backend is up.
- `record_failure(reason)`: a request or a probe failed (connect error, timeout, 5xx, broken
  stream). After `max_fails` failures in a row the backend is marked down. A success in between
  (`record_success()`) resets the count.
- While down it is skipped by the router and probed every `cooldown` seconds (the first probe
  `cooldown` s after it went down); the first probe that answers marks it up.
- `record_activity()`: the backend sent bytes for a request (an answer's headers, a stream's
  chunk). A probe that fails while the backend is sending is not counted: a server too busy to
  answer `/models` within the probe timeout while it streams tokens to clients is busy, not down
  (requests that fail still count, as above).
- `on_change(up: bool)` is called on every transition (metrics, logs).

`probe_loop(health, probe, interval)` runs until cancelled: probes at once, then every `interval`
seconds while the backend is up and every `cooldown` seconds while it is down (a backend that a
failed request marks down is probed `cooldown` s later, not at the end of the interval);
`probe()` returns True when the backend answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable

logger = logging.getLogger("workbench.proxy")


class BackendHealth:
    """See the module docstring."""

    def __init__(self, name: str, *, max_fails: int = 1, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None):
        self.name = name
        self.max_fails = max_fails
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self.up = True
        self.fails = 0
        self.retry_at = 0.0  # while down: no probe before this time
        self.last_error: str | None = None
        self.last_probe: float | None = None  # when the last probe finished
        self.last_activity = float("-inf")  # when the backend last sent bytes for a request
        self.went_down = asyncio.Event()  # wakes the probe loop (it may be waiting `interval`)

    def record_success(self) -> None:
        self.fails = 0
        if not self.up:
            self._set(True)

    def record_activity(self) -> None:
        self.last_activity = self._clock()

    def now(self) -> float:
        return self._clock()

    def record_failure(self, reason: str) -> None:
        self.fails += 1
        self.last_error = reason
        if self.up and self.fails >= self.max_fails:
            self._set(False)
            logger.warning("backend %s marked down after %d failure(s): %s", self.name,
                           self.fails, reason)
        if not self.up:
            self.retry_at = self._clock() + self.cooldown

    def probe_due(self) -> bool:
        return self.up or self._clock() >= self.retry_at

    def next_probe_in(self, interval: float) -> float:
        """Seconds until the next probe: `interval` while up, the rest of the cooldown while
        down."""
        return interval if self.up else max(0.0, self.retry_at - self._clock())

    def _set(self, up: bool) -> None:
        self.up = up
        if not up:
            self.went_down.set()
        if up:
            logger.info("backend %s is up again", self.name)
        if self._on_change is not None:
            self._on_change(up)


async def probe_loop(health: BackendHealth, probe: Callable[[], Awaitable[bool]],
                     interval: float) -> None:
    """Probe now, then every `interval` s (see the module docstring); runs until cancelled."""
    while True:
        if health.probe_due():
            started = health.now()
            try:
                ok = await probe()
            except Exception:  # noqa: BLE001 - a probe that raises is a failed probe
                logger.debug("probe of %s raised", health.name, exc_info=True)
                ok = False
            health.last_probe = time.monotonic()
            if ok:
                health.record_success()
            elif health.up and health.last_activity >= started:
                logger.debug("probe of %s failed while it was sending answers: busy, not down",
                             health.name)
            else:
                health.record_failure("health check failed")
        if health.up:  # until the interval is over, or a failed request marks it down
            health.went_down.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(health.went_down.wait(), interval)
        else:
            await asyncio.sleep(health.next_probe_in(interval))
