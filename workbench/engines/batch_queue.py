"""`BatchQueue`: the bounded waiting queue of a static-batching engine (vInference behind a server).

Callers `submit(request, loop)` and get the request's `OutputStream`; one worker thread takes
everything waiting (up to `max_batch_size` sequences), runs it as one static batch through
`run_batch(requests)` (an iterator that yields after each step of device work) and streams each
request's deltas. Requests that arrive while a batch runs wait for the next one, so a burst of
requests becomes a few batches on one thread, never a thread per request. More than `max_waiting`
waiting requests is `EngineOverloadedError` (HTTP 429).

Plain Python, no JAX. `abort(request_id)` ends a waiting request at once (a running one is the
engine's to abort); `stop()` ends the worker after its batch and aborts what waits.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Callable, Iterator

from workbench.engines.output_stream import OutputStream
from workbench.engines.request import Request
from workbench.engines.types import EngineOverloadedError, RequestFailedError


class BatchQueue:
    def __init__(self, run_batch: Callable[[list[Request]], Iterator[None]], *, name: str,
                 max_batch_size: int, max_waiting: int, on_change: Callable[[int, int], None]):
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 1:
            raise ValueError(f"max_waiting must be an int >= 1, got {max_waiting!r}")
        self.name = name
        self.max_batch_size, self.max_waiting = max_batch_size, max_waiting
        self._run_batch, self._on_change = run_batch, on_change  # on_change(running, waiting)
        self._waiting: collections.OrderedDict[str, tuple[Request, OutputStream]] = \
            collections.OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.num_running = 0

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, req: Request, loop: asyncio.AbstractEventLoop | None = None) -> OutputStream:
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise EngineOverloadedError(f"{self.name}: the waiting queue is full "
                                            f"({self.max_waiting} requests)")
            stream = OutputStream(req.request_id, loop)
            self._waiting[req.request_id] = (req, stream)
            if not self.running:
                self._stopping = False
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"{self.name}-batches")
                self._thread.start()
            self._cond.notify()
        self._on_change(self.num_running, self.num_waiting)
        return stream

    def abort(self, request_id: str) -> bool:
        with self._cond:
            item = self._waiting.pop(request_id, None)
        if item is None:
            return False
        req, stream = item
        req.abort()
        stream.put(req.output(delta=True))
        self._on_change(self.num_running, self.num_waiting)
        return True

    def stop(self) -> None:
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify()
        if thread is not None:
            thread.join()
        for rid in list(self._waiting):
            self.abort(rid)

    def _take(self) -> list[tuple[Request, OutputStream]] | None:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch, num_seqs = [], 0
            for rid, (req, stream) in list(self._waiting.items()):
                if batch and num_seqs + len(req.sequences) > self.max_batch_size:
                    break
                batch.append(self._waiting.pop(rid))
                num_seqs += len(req.sequences)
            self.num_running = len(batch)
        return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self._on_change(self.num_running, self.num_waiting)
            sent = set()
            try:
                for _ in self._run_batch([req for req, _ in batch]):
                    for req, stream in batch:
                        if req.request_id not in sent:
                            self._emit(req, stream, sent)
            except Exception as e:  # noqa: BLE001 - a bug outside the engine's own isolation
                for req, stream in batch:
                    if req.request_id not in sent:
                        req.fail(f"{type(e).__name__}: {e}")
            for req, stream in batch:
                if req.request_id not in sent:
                    if not req.finished:  # cannot happen; never leave a stream open
                        req.abort()
                    self._emit(req, stream, sent)
            with self._cond:
                self.num_running = 0
            self._on_change(0, self.num_waiting)

    @staticmethod
    def _emit(req: Request, stream: OutputStream, sent: set[str]) -> None:
        if req.error is not None:
            sent.add(req.request_id)
            stream.put(RequestFailedError(f"request {req.request_id} failed: {req.error}"))
            return
        out = req.output(delta=True)
        if out.finished or any(o.delta_text or o.delta_token_ids for o in out.outputs):
            stream.put(out)
        if out.finished:
            sent.add(req.request_id)
