"""The background-engine core shared by vSurge and eSurge: one driver thread over a scheduler (host)
and a runner (device). Plain Python: the runner is the only part that touches JAX.

Lifecycle: `start()` allocates the runner's device state and starts the driver thread;
`submit(request)` queues a request through a thread-safe inbox and returns its `OutputStream`;
`abort(request_id)` ends one (finish reason "abort"); `stop()` ends the thread, aborts what is
left and frees device memory (`start()` may follow again).

NOTE: the one idea. Every driver iteration reads as a sentence:

    plan = scheduler.schedule()  ->  out = runner.execute(plan)  ->  scheduler.update(plan, out)

JAX dispatch is asynchronous, so `execute` returns before the device has finished: the core
applies iteration k's output (`update`) after dispatching iteration k+1, so the host's work
overlaps the device's, and its only wait is `runner.fetch(out)`, the transfer of the sampled
token ids. A scheduler that plans iteration k+1 before knowing k's tokens must allow for them
(vSurge: slots are freed a step late; eSurge: a decode input may still be on the device).

Contracts (tests drive the core with a fake scheduler and runner, no model):
- scheduler (host only, no JAX): `add(request)`; `abort(request_id) -> Request | None` (frees
  what the request holds); `check_capacity(num_sequences, num_waiting)` (raises ValueError or
  `EngineOverloadedError`); `schedule() -> plan`; `update(plan, host_out) -> [(Request,
  num_new_tokens)]` (hands the sampled tokens to the sequences); `finish(request_id)` (forget
  a finished request); `num_running`, `num_waiting`, `has_work`; `report(collector)` (its own
  gauges).
- plan: `empty` (nothing to dispatch), `num_tokens` (tokens it computes: the
  `iteration_tokens_total` histogram) and `events`: `(request_id, event, info)` triples. The
  core turns "scheduled", "preempted" and "prefix_lookup" (info: queries, hits) into metrics and
  records every event in the request's timeline.
- runner: `allocate()`, `free()`, `execute(plan) -> handle` (dispatch, do not wait),
  `fetch(handle) -> host output` (blocks until the device is done); optionally
  `prepare(request)`: build (host only) what the device will need of one request, raising if its
  inputs cannot be prepared.

Faults stay with their request:
- `prepare(request)` runs when the driver takes a request in; if it raises, that request alone
  fails (finish_reason "error"; its stream raises `RequestFailedError`).
- if an iteration raises (schedule, execute, fetch or update), the requests the scheduler had
  taken in (they hold device state) fail the same way; the core then rebuilds: the runner's
  device state is freed and allocated again, a new scheduler is made, and the requests still
  waiting are handed to it in arrival order. The engine goes on serving them and the next ones.
- if the rebuild itself raises, or `MAX_CONSECUTIVE_FAULTS` iterations fail with no successful
  one between them, the engine is dead: `failure` says why, every request fails, and `submit`
  raises `EngineDeadError` at once (no driver restart) until `stop()` and `start()` again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from typing import Any, Callable

from workbench.engines.output_stream import OutputStream
from workbench.engines.request import Request
from workbench.engines.sampled_tokens import record_tokens
from workbench.engines.timeline import Timeline
from workbench.engines.types import (EngineDeadError, EngineOverloadedError, RequestFailedError,
                                    RequestStatus)
from workbench.metrics import MetricsCollector

logger = logging.getLogger("workbench.engines")

MAX_CONSECUTIVE_FAULTS = 3


class EngineCore:
    """One driver thread over `make_scheduler()` and `runner`; see the module docstring."""

    def __init__(self, *, name: str, make_scheduler: Callable[[], Any], runner: Any,
                 collector: MetricsCollector, timeline: Timeline | None = None):
        self.name = name
        self._make_scheduler = make_scheduler
        self.scheduler = make_scheduler()
        self.runner = runner
        self.collector = collector
        self.timeline = timeline or Timeline()
        # Guards the scheduler during the driver's host phases, so that other threads may read
        # a consistent view of it (e.g. eSurge's page map) between them.
        self.lock = threading.RLock()
        self._lifecycle = threading.Lock()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, OutputStream] = {}
        self._requests: dict[str, Request] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inflight: tuple[Any, Any] | None = None  # (plan, handle) dispatched, not updated
        # Per driver iteration: wall seconds, and host seconds (wall minus the time blocked
        # waiting for the device's sampled tokens): the host overhead of one step.
        self.step_times: collections.deque = collections.deque(maxlen=4096)
        self.host_times: collections.deque = collections.deque(maxlen=4096)
        self._blocked = 0.0
        self.failure: str | None = None  # why the engine is dead (see the module docstring)
        self.num_faults = 0  # iterations that raised, in all
        self._consecutive_faults = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lifecycle:
            if self.running:
                return
            self.failure = None  # an explicit restart clears a failure
            self._consecutive_faults = 0
            self.runner.allocate()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._driver, name=f"{self.name}-driver",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread, abort every request left, free the runner; safe to call twice."""
        with self._lifecycle:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._stopping.set()
            self._wake.set()
            thread.join()
            with self.lock:
                for rid in list(self._requests):
                    self._finish_aborted(rid)
                self._drain_inbox(abort_new=True)
                self.runner.free()
                self._inflight = None
                self.scheduler = self._make_scheduler()
            self.collector.set_running(0)
            self.collector.set_waiting(0)

    # ---- requests -----------------------------------------------------------------------------
    def submit(self, req: Request, loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        """Queue a validated request (starting the driver if needed); returns its stream."""
        if self.failure is not None:
            raise EngineDeadError(f"{self.name} engine has failed and cannot recover: "
                                  f"{self.failure}")
        if req.request_id in self._requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        try:
            # submitted but not admitted yet: queued in the scheduler or still in the inbox
            waiting = len(self._requests) - self.scheduler.num_running
            self.scheduler.check_capacity(len(req.sequences), waiting)
        except EngineOverloadedError:
            self.collector.on_rejected()
            raise
        if not self.running:
            self.start()
        stream = OutputStream(req.request_id, loop)
        self._streams[req.request_id] = stream
        self._requests[req.request_id] = req
        self.collector.on_arrival(req.request_id, len(req.prompt_ids), n=req.params.n,
                                  max_tokens=req.params.max_tokens)
        self.timeline.record(req.request_id, "queued", num_prompt_tokens=len(req.prompt_ids),
                             priority=req.priority, tenant=req.tenant)
        self._inbox.put(("add", req))
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> bool:
        """Ask the driver to end a request; False if it is unknown or already finished."""
        req = self._requests.get(request_id)
        if req is None:
            return False
        self._inbox.put(("abort", request_id))
        req.abort_requested = True  # after the put: a driver that sees the flag finds the abort
        self._wake.set()
        return True

    @property
    def num_requests(self) -> int:
        """Requests submitted and not finished."""
        return len(self._requests)

    # ---- the driver ---------------------------------------------------------------------------
    def _driver(self) -> None:
        try:
            while not self._stopping.is_set():
                with self.lock:
                    self._drain_inbox()
                if self._inflight is None and not self.scheduler.has_work:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                try:
                    self._iteration()
                except Exception as e:  # noqa: BLE001 - fail the step's requests, rebuild
                    self._recover(e)
            if self._inflight is not None:
                self._update(self._inflight)
            self._inflight = None
        except BaseException as e:  # noqa: BLE001 - fail every request, keep the process alive
            self.failure = self.failure or f"driver failed: {type(e).__name__}: {e}"
            logger.exception("%s driver failed", self.name)
            err = EngineDeadError(f"{self.name} engine has failed: {self.failure}")
            for stream in list(self._streams.values()):
                stream.put(err)
            self._streams.clear()
            self._requests.clear()

    def _iteration(self) -> None:
        t0 = time.perf_counter()
        with self.lock:
            plan = self.scheduler.schedule()
            self._record_events(plan)
        if not plan.empty:
            self.collector.on_iteration(plan.num_tokens)
        previous = self._inflight
        self._inflight = None if plan.empty else (plan, self.runner.execute(plan))
        if previous is not None:
            self._update(previous)  # overlaps with the device running `plan`
        elif plan.empty:  # nothing could be scheduled and nothing is in flight
            self._wake.wait(0.005)
            self._wake.clear()
        wall = time.perf_counter() - t0
        self.step_times.append(wall)
        self.host_times.append(wall - self._blocked)
        self._blocked = 0.0
        self._update_gauges()

    def _recover(self, exc: Exception) -> None:
        """An iteration raised: fail the requests taken in, rebuild device state and scheduler,
        hand the waiting requests to the new scheduler (see the module docstring)."""
        self.num_faults += 1
        self._consecutive_faults += 1
        logger.error("%s: a driver iteration failed (%s: %s); failing the requests in it and "
                     "rebuilding", self.name, type(exc).__name__, exc, exc_info=exc)
        self._inflight = None
        self._blocked = 0.0
        reason = f"a device step failed: {type(exc).__name__}: {exc}"
        dead = self._consecutive_faults >= MAX_CONSECUTIVE_FAULTS
        if dead:  # before any request hears of it: a client that asks /health next sees it
            self.failure = (f"{self._consecutive_faults} driver iterations in a row failed; "
                            f"the last: {type(exc).__name__}: {exc}")
        with self.lock:
            self._drain_inbox()  # so that every live request is in the scheduler or failed
            waiting = []
            for req in list(self._requests.values()):
                if req.admitted:
                    self._fail(req, reason)
                else:
                    waiting.append(req)
            if dead:
                raise EngineDeadError(self.failure) from exc
            try:
                self.runner.free()
                self.runner.allocate()
                self.scheduler = self._make_scheduler()
            except Exception as e:
                self.failure = (f"rebuilding after a failed step failed: {type(e).__name__}: "
                                f"{e} (the step: {type(exc).__name__}: {exc})")
                raise EngineDeadError(self.failure) from e
            for req in waiting:
                self.scheduler.add(req)

    def _update(self, inflight: tuple[Any, Any]) -> None:
        """Hand the sampled tokens of dispatched work to their requests; stream and finish."""
        plan, handle = inflight
        t0 = time.perf_counter()
        host = self.runner.fetch(handle)
        self._blocked += time.perf_counter() - t0
        with self.lock:
            for req, n in self.scheduler.update(plan, host):
                if req.first_token_time is None:
                    self.timeline.record(req.request_id, "first_token")
                record_tokens(self.collector, req, n)
                self._emit(req)
        self._consecutive_faults = 0

    def _record_events(self, plan) -> None:
        for rid, event, info in plan.events:
            if event == "scheduled":
                self.collector.on_scheduled(rid)
            elif event == "preempted":
                self.collector.on_preemption(rid)
            elif event == "prefix_lookup":
                self.collector.on_prefix_cache(info["queries"], info["hits"])
            self.timeline.record(rid, event, **info)

    def _update_gauges(self) -> None:
        self.collector.set_running(self.scheduler.num_running)
        self.collector.set_waiting(self.scheduler.num_waiting)
        self.scheduler.report(self.collector)

    def _drain_inbox(self, abort_new: bool = False) -> None:
        while True:
            try:
                kind, arg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                if abort_new:
                    self._finish_aborted(arg.request_id)
                elif self._prepare(arg):
                    self.scheduler.add(arg)
            elif kind == "abort":
                self.scheduler.abort(arg)  # frees what it holds
                self._finish_aborted(arg)

    def _prepare(self, req: Request) -> bool:
        """The runner's `prepare(req)`; False (and the request failed) if it raises."""
        prepare = getattr(self.runner, "prepare", None)
        if prepare is None:
            return True
        try:
            prepare(req)
        except Exception as e:  # noqa: BLE001 - this request's fault only
            logger.warning("%s: preparing %s failed: %s: %s", self.name, req.request_id,
                           type(e).__name__, e)
            self._fail(req, f"preparing its inputs failed: {type(e).__name__}: {e}")
            return False
        return True

    def _fail(self, req: Request, reason: str) -> None:
        """End `req` with finish_reason "error"; its stream raises RequestFailedError."""
        req.fail(reason)
        self._requests.pop(req.request_id, None)
        stream = self._streams.pop(req.request_id, None)
        self.collector.on_finish(req.request_id, "error")
        self.timeline.record(req.request_id, "finished", reason="error", error=reason)
        if stream is not None:
            stream.put(RequestFailedError(f"request {req.request_id} failed in the {self.name} "
                                          f"engine: {reason}"))

    def _finish_aborted(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None:
            return
        req.abort()
        self._emit(req)

    def _emit(self, req: Request) -> None:
        """Stream the request's new output; on finish, record it and forget the request."""
        stream = self._streams.get(req.request_id)
        if req.finished:
            self.scheduler.finish(req.request_id)
            self._requests.pop(req.request_id, None)
            self._streams.pop(req.request_id, None)
            self.collector.on_finish(req.request_id, req.finish_reason)
            self.timeline.record(req.request_id, "finished", reason=req.finish_reason,
                                 num_generated_tokens=sum(len(s.output_ids)
                                                          for s in req.sequences))
            self._update_gauges()
        if stream is not None:
            stream.put(req.output(delta=True))


def mark_running(req: Request) -> None:
    """Status transition at admission: every waiting (or preempted) sequence of `req` runs."""
    for seq in req.sequences:
        if seq.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            seq.status = RequestStatus.RUNNING
