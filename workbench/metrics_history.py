"""`MetricsHistory`: a background sampler that turns engines' metrics snapshots into time series.

    history = MetricsHistory(lambda: {name: engine.metrics() for name, engine in engines.items()})
    history.start()                      # polls every `interval` seconds (default 0.5: 2 Hz)
    cols = history.series("vsurge")      # {"t": [...], "output_tok_s": [...], ...}
    rows, seq = history.since("vsurge", seq)   # only the samples after `seq` (for chart streaming)
    history.stop()

One sample per engine per poll, kept in a bounded ring buffer (`maxlen` samples per engine). Each
sample holds `FIELDS`:
    seq           a number that grows by one per poll (shared by every engine)
    t             seconds since the history was created
    running, waiting        requests decoding / queued (gauges)
    slots_used, kv_usage    decode slots in use, KV-cache usage in [0, 1] (None if not reported)
    output_tok_s  tokens generated since the previous sample / seconds since it
    ttft_ms, itl_ms         mean TTFT / inter-token latency of what was observed since the
                            previous sample (None when nothing was), from the collector's
                            cumulative `latency_totals`
    finished, preemptions   cumulative counts

Readers (UI threads, a Bokeh periodic callback) never block the sampler for long: one lock guards
the buffers and readers copy out. Plain Python: no JAX, no UI. A source that raises is logged and
the sampler goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Mapping

logger = logging.getLogger("workbench.metrics_history")

FIELDS = ("seq", "t", "running", "waiting", "slots_used", "kv_usage", "output_tok_s", "ttft_ms",
          "itl_ms", "finished", "preemptions")

Source = Callable[[], Mapping[str, dict]]


class MetricsHistory:
    """Background sampler of metrics snapshots; see the module docstring."""

    def __init__(self, source: Source, *, interval: float = 0.5, maxlen: int = 1200,
                 clock: Callable[[], float] = time.monotonic):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not isinstance(maxlen, int) or maxlen < 2:
            raise ValueError(f"maxlen must be an int >= 2, got {maxlen!r}")
        self.source = source
        self.interval = float(interval)
        self.maxlen = maxlen
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._buffers: dict[str, collections.deque] = {}
        self._previous: dict[str, tuple[float, dict]] = {}
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.samples_taken = 0
        self.busy_s = 0.0  # seconds spent sampling (the sampler's own cost)

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "MetricsHistory":
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="metrics-history", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5.0)

    def _loop(self) -> None:
        next_at = self._clock()
        while not self._stop.is_set():
            self.sample()
            next_at += self.interval
            delay = next_at - self._clock()
            if delay < 0:  # fell behind (a slow source): do not try to catch up
                next_at, delay = self._clock(), 0.0
            self._stop.wait(delay)

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self) -> None:
        """Poll the source once and append one sample per engine."""
        start = time.perf_counter()
        try:
            snapshots = dict(self.source())
        except Exception:  # noqa: BLE001 - a failing source must not kill the sampler
            logger.exception("metrics source failed")
            return
        now = self._clock()
        with self._lock:
            self._seq += 1
            for name, snap in snapshots.items():
                row = self._row(name, snap, now)
                buf = self._buffers.get(name)
                if buf is None:
                    buf = self._buffers[name] = collections.deque(maxlen=self.maxlen)
                buf.append(row)
                self._previous[name] = (now, snap)
            self.samples_taken += 1
        self.busy_s += time.perf_counter() - start

    def _row(self, name: str, snap: dict, now: float) -> dict[str, Any]:
        prev_t, prev = self._previous.get(name, (None, None))
        rate = ttft = itl = None
        if prev is not None and now > prev_t:
            tokens = snap.get("generation_tokens_total", 0) - prev.get("generation_tokens_total", 0)
            rate = max(0.0, tokens / (now - prev_t))
            ttft = _interval_mean(prev, snap, "ttft_s")
            itl = _interval_mean(prev, snap, "itl_s")
        kv = snap.get("kv_cache_usage_perc")
        return {
            "seq": self._seq, "t": now - self._t0,
            "running": snap.get("num_requests_running", 0),
            "waiting": snap.get("num_requests_waiting", 0),
            "slots_used": snap.get("num_slots_used", 0), "kv_usage": kv,
            "output_tok_s": rate, "ttft_ms": ttft, "itl_ms": itl,
            "finished": snap.get("num_requests_finished", 0),
            "preemptions": snap.get("num_preemptions", 0),
        }

    # ---- readers --------------------------------------------------------------------------------
    def engines(self) -> list[str]:
        with self._lock:
            return list(self._buffers)

    def series(self, engine: str) -> dict[str, list]:
        """Every kept sample of `engine` as columns (empty columns for an unknown engine)."""
        return self.since(engine, 0)[0]

    def since(self, engine: str, seq: int) -> tuple[dict[str, list], int]:
        """The samples of `engine` after sequence number `seq`, as columns, and the last sequence
        number seen (pass it back next time)."""
        with self._lock:
            rows = [r for r in self._buffers.get(engine, ()) if r["seq"] > seq]
            last = self._seq
        return {f: [r[f] for r in rows] for f in FIELDS}, last

    def latest(self, engine: str) -> dict[str, Any] | None:
        with self._lock:
            buf = self._buffers.get(engine)
            return dict(buf[-1]) if buf else None

    def forget(self, engine: str) -> None:
        """Drop an engine's samples (it was removed)."""
        with self._lock:
            self._buffers.pop(engine, None)
            self._previous.pop(engine, None)

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()
            self._previous.clear()


def _interval_mean(prev: dict, snap: dict, key: str) -> float | None:
    """Mean (ms) of the latency observations between two snapshots, or None if there were none."""
    try:
        a, b = prev["latency_totals"][key], snap["latency_totals"][key]
    except (KeyError, TypeError):
        return None
    count = b["count"] - a["count"]
    if count <= 0:
        return None
    return 1e3 * (b["sum"] - a["sum"]) / count
