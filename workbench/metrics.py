"""Engine metrics shared by vInference, vSurge and eSurge.

One :class:`MetricsCollector` per engine instance.  The engine's driver thread
calls the lifecycle hooks; UI and server threads read :meth:`MetricsCollector.snapshot`
(a plain ``dict``) or :meth:`MetricsCollector.render` / :func:`render_many`
(Prometheus text format).  This module is plain Python (stdlib +
``prometheus_client``); it never imports jax.  Every public method is
thread-safe: one lock per collector guards all state.

Names and labels
----------------
Metric names follow vLLM's, under ``prefix`` (default ``"workbench:"``).  Every
metric carries the labels ``model_name`` and ``engine``.  ``prometheus_client``
appends ``_total`` to counters, and histograms expose ``_bucket``/``_sum``/``_count``.

Gauges (set by the engine)
    ``num_requests_running``    requests currently decoding/prefilling
    ``num_requests_waiting``    requests queued, not yet scheduled
    ``kv_cache_usage_perc``     KV-cache usage as a fraction in [0, 1] (vLLM's name)
    ``num_slots_used``          decode slots (batch rows) in use
    ``num_slots_total``         decode slots available

Counters
    ``prefix_cache_queries``    prompt tokens looked up in the prefix cache
    ``prefix_cache_hits``       of those, tokens found in the cache
    ``num_preemptions``         preemptions of running requests
    ``prompt_tokens``           prompt tokens of admitted requests (on arrival)
    ``generation_tokens``       generated tokens (first token included)
    ``request_success``         finished requests; extra label
                                ``finished_reason`` = ``stop`` | ``length`` | ``abort``
    ``num_requests_rejected``   requests refused at admission

Histograms, latency (seconds, buckets :data:`LATENCY_BUCKETS`:
0.5 ms .. 80 s, fine enough to resolve millisecond latencies)
    ``time_to_first_token_seconds``   first token - arrival
    ``inter_token_latency_seconds``   gap between tokens (see ``on_tokens``)
    ``e2e_request_latency_seconds``   finish - arrival (every finished reason)
    ``request_queue_time_seconds``    first scheduling - arrival
    ``request_prefill_time_seconds``  first token - first scheduling
    ``request_decode_time_seconds``   finish - first token
    ``request_inference_time_seconds`` finish - first scheduling (prefill + decode, vLLM's)

Histograms, token counts (buckets :data:`TOKEN_BUCKETS`: 1-2-5 series, 1 .. 1M),
observed once per finished request
    ``request_prompt_tokens``         prompt length
    ``request_generation_tokens``     generated tokens
    ``request_params_max_tokens``     the request's ``max_tokens`` (when given at arrival)
and, with buckets :data:`N_BUCKETS` (1, 2, 5, 10, 20, 50, 100, 128),
    ``request_params_n``              the request's ``n`` (when given at arrival)
and once per engine step (vLLM's buckets, 1 .. 16384)
    ``iteration_tokens_total``        tokens the step computed (prompt chunks and decodes)

Hooks (every timed hook takes ``now``; default ``time.monotonic()`` or the
collector's ``clock``).  A hook naming an unknown request id is a silent no-op,
so a late abort can never crash the driver.

``on_arrival(request_id, num_prompt_tokens, *, n=None, max_tokens=None)``
    starts tracking; counts the prompt tokens; ``n`` and ``max_tokens`` (the
    request's sampling parameters) are observed at finish.  A repeated id still
    being tracked is ignored.
``on_scheduled(request_id)``
    first call only: queue time = now - arrival; prefill starts.  Calls after a
    preemption (re-scheduling) change nothing.
``on_first_token(request_id)``
    TTFT = now - arrival; prefill time = now - scheduled (when scheduled);
    counts one generation token.  Later calls are ignored.
``on_tokens(request_id, num_tokens)``
    counts ``num_tokens`` generated tokens after the first.  Inter-token
    latency: the gap since the previous token event, divided evenly over the
    chunk, i.e. ``(now - last_token_time) / num_tokens`` observed
    ``num_tokens`` times (so the histogram has one sample per token after the
    first, and its sum is the decode wall time).  If no first token was
    recorded yet, ``now`` is recorded as the first token time (as
    ``on_first_token``) and the chunk's tokens give no ITL samples.
``on_finish(request_id, finished_reason)``
    ``finished_reason`` must be ``stop``, ``length`` or ``abort`` (else
    ``ValueError``, raised before the id is looked up).  Observes e2e latency,
    decode time (when a first token exists), inference time (when scheduled),
    the token-count and request-parameter histograms and
    ``request_success{finished_reason}``; stops tracking the request.
``on_preemption(request_id)``
    counts a preemption of a tracked request.
``on_rejected(request_id=None)``
    counts a rejected request; stops tracking ``request_id`` if given.
``on_prefix_cache(queries, hits)``
    adds prefix-cache lookups and hits (tokens).
``on_iteration(num_tokens)``
    one engine step computed ``num_tokens`` tokens.
``set_running(n)``, ``set_waiting(n)``, ``set_kv_cache_usage(frac)``, ``set_slots(used, total)``
    gauges; ``frac`` is clamped to [0, 1].

Snapshot windows
----------------
``snapshot()`` summarises (``count``, ``mean``, ``p50``, ``p90``, ``p99``;
percentiles linearly interpolated, values ``None`` when empty) the last
``window`` samples of: ``ttft_s``, ``queue_s``, ``prefill_s`` (recorded when
the event happens), ``e2e_s``, ``decode_s`` and ``itl_s`` (recorded at finish;
``itl_s`` holds each request's *mean* inter-token latency, for requests with
at least two tokens).  ``generation_tokens_per_s`` is the tokens generated in
the last 10 s divided by ``min(10 s, uptime)``.  ``requests`` lists the last 50
finished requests, newest last.  ``reset()`` clears these windows, never the
Prometheus counters nor the cumulative totals. ``latency_totals`` holds the cumulative
``{"ttft_s": {"sum", "count"}, "itl_s": {"sum", "count"}}`` of every observation (as the
histograms' ``_sum``/``_count``), so a sampler can compute the mean latency between two snapshots.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest

from workbench.prometheus_metrics import (  # noqa: F401 - buckets and render_many re-exported
    ITERATION_BUCKETS,
    LATENCY_BUCKETS,
    N_BUCKETS,
    TOKEN_BUCKETS,
    claim_families,
    render_many,
    validate_prefix,
)

__all__ = [
    "FINISHED_REASONS",
    "LATENCY_BUCKETS",
    "TOKEN_BUCKETS",
    "MetricsCollector",
    "render_many",
]

FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")

RECENT_REQUESTS = 50
RATE_WINDOW_S = 10.0

class _Request:
    __slots__ = ("request_id", "arrival", "prompt_tokens", "scheduled", "first_token", "last_token",
                 "generation_tokens", "itl_sum", "itl_count", "preemptions", "queue_s", "ttft_s", "prefill_s",
                 "n", "max_tokens")

    def __init__(self, request_id: Any, arrival: float, prompt_tokens: int,
                 n: int | None = None, max_tokens: int | None = None):
        self.request_id = request_id
        self.n = n
        self.max_tokens = max_tokens
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.generation_tokens = 0
        self.itl_sum = 0.0
        self.itl_count = 0
        self.preemptions = 0
        self.queue_s: float | None = None
        self.ttft_s: float | None = None
        self.prefill_s: float | None = None


def _summary(values: Iterable[float]) -> dict[str, Any]:
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None}

    def pct(q: float) -> float:
        k = (n - 1) * q
        lo = math.floor(k)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"count": n, "mean": math.fsum(xs) / n, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}


def _nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            iv = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int, got {value!r}") from None
        if iv != value:
            raise ValueError(f"{name} must be an int, got {value!r}")
        value = iv
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class MetricsCollector:
    """Metrics of one engine instance; see the module docstring.

    ``registry``: Prometheus registry to register into; by default a new one
    owned by this collector, so engines in one process never collide.  Several
    collectors may share a registry (and prefix) as long as their
    ``(model_name, engine)`` label values differ.  ``clock``: time source used
    when a hook gets no ``now`` (default ``time.monotonic``).
    """

    def __init__(
        self,
        engine: str,
        model_name: str,
        *,
        prefix: str = "workbench:",
        registry: CollectorRegistry | None = None,
        window: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not isinstance(engine, str) or not engine:
            raise ValueError(f"engine must be a non-empty str, got {engine!r}")
        if not isinstance(model_name, str):
            raise ValueError(f"model_name must be a str, got {model_name!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.engine = engine
        self.model_name = model_name
        self.prefix = validate_prefix(prefix)
        self.window = window
        self._clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()

        fam = claim_families(self.registry, self.prefix, model_name, engine, self)
        self._fam = fam

        lv = {"model_name": model_name, "engine": engine}
        self._running = fam.running.labels(**lv)
        self._waiting = fam.waiting.labels(**lv)
        self._kv_usage = fam.kv_usage.labels(**lv)
        self._slots_used = fam.slots_used.labels(**lv)
        self._slots_total = fam.slots_total.labels(**lv)
        self._prefix_queries = fam.prefix_queries.labels(**lv)
        self._prefix_hits = fam.prefix_hits.labels(**lv)
        self._preemptions = fam.preemptions.labels(**lv)
        self._prompt_tokens = fam.prompt_tokens.labels(**lv)
        self._generation_tokens = fam.generation_tokens.labels(**lv)
        self._success = {r: fam.success.labels(finished_reason=r, **lv) for r in FINISHED_REASONS}
        self._rejected = fam.rejected.labels(**lv)
        self._h_ttft = fam.ttft.labels(**lv)
        self._h_itl = fam.itl.labels(**lv)
        self._h_e2e = fam.e2e.labels(**lv)
        self._h_queue = fam.queue.labels(**lv)
        self._h_prefill = fam.prefill.labels(**lv)
        self._h_decode = fam.decode.labels(**lv)
        self._h_req_prompt = fam.req_prompt.labels(**lv)
        self._h_req_gen = fam.req_gen.labels(**lv)
        self._h_iteration = fam.iteration_tokens.labels(**lv)
        self._h_inference = fam.inference.labels(**lv)
        self._h_params_n = fam.params_n.labels(**lv)
        self._h_params_max_tokens = fam.params_max_tokens.labels(**lv)

        self._lock = threading.Lock()
        self._start = clock()
        self._requests: dict[Any, _Request] = {}
        # Python-side mirror of the gauges and counters, for snapshot().
        self._n_running = 0
        self._n_waiting = 0
        self._kv = 0.0
        self._slots = (0, 0)
        self._n_prefix_queries = 0
        self._n_prefix_hits = 0
        self._n_preemptions = 0
        self._n_rejected = 0
        self._n_prompt_tokens = 0
        self._n_generation_tokens = 0
        self._n_iterations = 0
        self._n_iteration_tokens = 0
        self._finished_by_reason = dict.fromkeys(FINISHED_REASONS, 0)
        # cumulative latency sums and counts (as the histograms'), for rates between snapshots
        self._latency_sums = {"ttft_s": [0.0, 0], "itl_s": [0.0, 0]}
        self._init_windows()

    def _init_windows(self) -> None:
        w = self.window
        self._w_ttft: deque[float] = deque(maxlen=w)
        self._w_itl: deque[float] = deque(maxlen=w)
        self._w_e2e: deque[float] = deque(maxlen=w)
        self._w_queue: deque[float] = deque(maxlen=w)
        self._w_prefill: deque[float] = deque(maxlen=w)
        self._w_decode: deque[float] = deque(maxlen=w)
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
        self._token_events: deque[tuple[float, int]] = deque()

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else float(now)

    def _add_generated(self, n: int, now: float) -> None:
        # Caller holds the lock.
        self._n_generation_tokens += n
        self._generation_tokens.inc(n)
        ev = self._token_events
        ev.append((now, n))
        cutoff = now - RATE_WINDOW_S
        while ev and ev[0][0] <= cutoff:
            ev.popleft()

    def _record_first_token(self, r: _Request, now: float) -> None:
        # Caller holds the lock.
        r.first_token = r.last_token = now
        ttft = max(0.0, now - r.arrival)
        r.ttft_s = ttft
        self._h_ttft.observe(ttft)
        self._w_ttft.append(ttft)
        self._latency_sums["ttft_s"][0] += ttft
        self._latency_sums["ttft_s"][1] += 1
        if r.scheduled is not None:
            prefill = max(0.0, now - r.scheduled)
            r.prefill_s = prefill
            self._h_prefill.observe(prefill)
            self._w_prefill.append(prefill)

    # ------------------------------------------------------------------ hooks

    def on_arrival(self, request_id: Any, num_prompt_tokens: int, now: float | None = None, *,
                   n: int | None = None, max_tokens: int | None = None) -> None:
        """A request was admitted: start tracking it and count its prompt tokens; `n` and
        `max_tokens` (its sampling parameters) are observed when it finishes."""
        num = _nonneg_int("num_prompt_tokens", num_prompt_tokens)
        n = None if n is None else _nonneg_int("n", n)
        max_tokens = None if max_tokens is None else _nonneg_int("max_tokens", max_tokens)
        t = self._now(now)
        with self._lock:
            if request_id in self._requests:
                return
            self._requests[request_id] = _Request(request_id, t, num, n, max_tokens)
            self._n_prompt_tokens += num
            self._prompt_tokens.inc(num)

    def on_scheduled(self, request_id: Any, now: float | None = None) -> None:
        """First scheduling (prefill starts): observe queue time = now - arrival."""
        t = self._now(now)
        with self._lock:
            r = self._requests.get(request_id)
            if r is None or r.scheduled is not None:
                return
            r.scheduled = t
            q = max(0.0, t - r.arrival)
            r.queue_s = q
            self._h_queue.observe(q)
            self._w_queue.append(q)

    def on_first_token(self, request_id: Any, now: float | None = None) -> None:
        """First token out: TTFT = now - arrival, prefill = now - scheduled; counts 1 token."""
        t = self._now(now)
        with self._lock:
            r = self._requests.get(request_id)
            if r is None or r.first_token is not None:
                return
            self._record_first_token(r, t)
            r.generation_tokens += 1
            self._add_generated(1, t)

    def on_tokens(self, request_id: Any, num_tokens: int, now: float | None = None) -> None:
        """``num_tokens`` more tokens out; ITL (now - last)/num_tokens observed num_tokens times."""
        n = _nonneg_int("num_tokens", num_tokens)
        t = self._now(now)
        with self._lock:
            r = self._requests.get(request_id)
            if r is None or n == 0:
                return
            if r.first_token is None:
                self._record_first_token(r, t)
            else:
                gap = max(0.0, t - r.last_token)
                itl = gap / n
                for _ in range(n):
                    self._h_itl.observe(itl)
                r.itl_sum += gap
                r.itl_count += n
                self._latency_sums["itl_s"][0] += gap
                self._latency_sums["itl_s"][1] += n
                r.last_token = t
            r.generation_tokens += n
            self._add_generated(n, t)

    def on_finish(self, request_id: Any, finished_reason: str, now: float | None = None) -> None:
        """Request done: e2e, decode time, token histograms, request_success{finished_reason}."""
        if finished_reason not in FINISHED_REASONS:
            raise ValueError(f"finished_reason must be one of {FINISHED_REASONS}, got {finished_reason!r}")
        t = self._now(now)
        with self._lock:
            r = self._requests.pop(request_id, None)
            if r is None:
                return
            e2e = max(0.0, t - r.arrival)
            self._h_e2e.observe(e2e)
            self._w_e2e.append(e2e)
            decode = None
            if r.first_token is not None:
                decode = max(0.0, t - r.first_token)
                self._h_decode.observe(decode)
                self._w_decode.append(decode)
            mean_itl = r.itl_sum / r.itl_count if r.itl_count else None
            if mean_itl is not None:
                self._w_itl.append(mean_itl)
            if r.scheduled is not None:
                self._h_inference.observe(max(0.0, t - r.scheduled))
            if r.n is not None:
                self._h_params_n.observe(r.n)
            if r.max_tokens is not None:
                self._h_params_max_tokens.observe(r.max_tokens)
            self._h_req_prompt.observe(r.prompt_tokens)
            self._h_req_gen.observe(r.generation_tokens)
            self._success[finished_reason].inc()
            self._finished_by_reason[finished_reason] += 1
            self._recent.append({
                "request_id": r.request_id,
                "prompt_tokens": r.prompt_tokens,
                "generation_tokens": r.generation_tokens,
                "queue_s": r.queue_s,
                "ttft_s": r.ttft_s,
                "prefill_s": r.prefill_s,
                "decode_s": decode,
                "e2e_s": e2e,
                "mean_itl_s": mean_itl,
                "preemptions": r.preemptions,
                "finished_reason": finished_reason,
            })

    def on_preemption(self, request_id: Any) -> None:
        """A running tracked request was preempted."""
        with self._lock:
            r = self._requests.get(request_id)
            if r is None:
                return
            r.preemptions += 1
            self._n_preemptions += 1
            self._preemptions.inc()

    def on_rejected(self, request_id: Any = None) -> None:
        """A request was refused at admission; stops tracking ``request_id`` if given."""
        with self._lock:
            if request_id is not None:
                self._requests.pop(request_id, None)
            self._n_rejected += 1
            self._rejected.inc()

    def on_prefix_cache(self, queries: int, hits: int) -> None:
        """Add prefix-cache lookups and hits (in tokens)."""
        q = _nonneg_int("queries", queries)
        h = _nonneg_int("hits", hits)
        if h > q:
            raise ValueError(f"prefix cache hits ({h}) exceed queries ({q})")
        with self._lock:
            self._n_prefix_queries += q
            self._n_prefix_hits += h
            self._prefix_queries.inc(q)
            self._prefix_hits.inc(h)

    def on_iteration(self, num_tokens: int) -> None:
        """One engine step computed `num_tokens` tokens."""
        n = _nonneg_int("num_tokens", num_tokens)
        with self._lock:
            self._n_iterations += 1
            self._n_iteration_tokens += n
            self._h_iteration.observe(n)

    # ----------------------------------------------------------------- gauges

    def set_running(self, n: int) -> None:
        n = _nonneg_int("running", n)
        with self._lock:
            self._n_running = n
            self._running.set(n)

    def set_waiting(self, n: int) -> None:
        n = _nonneg_int("waiting", n)
        with self._lock:
            self._n_waiting = n
            self._waiting.set(n)

    def set_kv_cache_usage(self, frac: float) -> None:
        """KV-cache usage as a fraction; clamped to [0, 1]."""
        f = float(frac)
        if math.isnan(f):
            raise ValueError("kv cache usage must not be NaN")
        f = min(1.0, max(0.0, f))
        with self._lock:
            self._kv = f
            self._kv_usage.set(f)

    def set_slots(self, used: int, total: int) -> None:
        u = _nonneg_int("used", used)
        tot = _nonneg_int("total", total)
        with self._lock:
            self._slots = (u, tot)
            self._slots_used.set(u)
            self._slots_total.set(tot)

    # ---------------------------------------------------------------- readers

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A plain dict of the current state (safe to hand to the UI/server)."""
        t = self._now(now)
        with self._lock:
            cutoff = t - RATE_WINDOW_S
            recent_tokens = sum(n for ts, n in self._token_events if cutoff < ts <= t)
            span = min(RATE_WINDOW_S, t - self._start)
            rate = recent_tokens / span if span > 0 else 0.0
            q = self._n_prefix_queries
            return {
                "engine": self.engine,
                "model_name": self.model_name,
                "num_requests_running": self._n_running,
                "num_requests_waiting": self._n_waiting,
                "num_slots_used": self._slots[0],
                "num_slots_total": self._slots[1],
                "kv_cache_usage_perc": self._kv,
                "num_requests_tracked": len(self._requests),
                "num_requests_finished": sum(self._finished_by_reason.values()),
                "num_requests_rejected": self._n_rejected,
                "num_preemptions": self._n_preemptions,
                "prompt_tokens_total": self._n_prompt_tokens,
                "generation_tokens_total": self._n_generation_tokens,
                "iterations_total": self._n_iterations,
                "iteration_tokens_total": self._n_iteration_tokens,
                "prefix_cache_queries_total": q,
                "prefix_cache_hits_total": self._n_prefix_hits,
                "prefix_cache_hit_rate": (self._n_prefix_hits / q) if q else None,
                "finished_by_reason": dict(self._finished_by_reason),
                "uptime_s": max(0.0, t - self._start),
                "generation_tokens_per_s": rate,
                "ttft_s": _summary(self._w_ttft),
                "itl_s": _summary(self._w_itl),
                "e2e_s": _summary(self._w_e2e),
                "queue_s": _summary(self._w_queue),
                "prefill_s": _summary(self._w_prefill),
                "decode_s": _summary(self._w_decode),
                "requests": [dict(d) for d in self._recent],
                "latency_totals": {k: {"sum": v[0], "count": v[1]}
                                   for k, v in self._latency_sums.items()},
            }

    def render(self) -> bytes:
        """Prometheus text format of this collector's registry."""
        return generate_latest(self.registry)

    def reset(self) -> None:
        """Clear the snapshot windows; Prometheus metrics and totals are kept."""
        with self._lock:
            self._init_windows()
