"""Per-request output channel from an engine's driver thread to its consumer.

The driver calls `put` (never blocks, never calls consumer code); a sync consumer iterates, an async
consumer's event loop is woken with `call_soon_threadsafe`. The last item is a finished
`RequestOutput` or an exception to raise in the consumer. `aoutputs(on_abandon)` is the async
consumer's loop, shared by every engine's `astream`: close it (e.g. with `contextlib.aclosing`)
and, if the request had not finished, `on_abandon()` runs at once (the engine aborts it).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable
from typing import Any

from workbench.engines.types import RequestOutput


class OutputStream:
    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None = None):
        self.request_id = request_id
        self._loop = loop
        self._async_q: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync_q: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False

    def put(self, item: RequestOutput | BaseException) -> None:
        """Called by the driver thread."""
        if self.closed:
            return
        if isinstance(item, BaseException) or item.finished:
            self.closed = True
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_q.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone
                pass
        else:
            self._sync_q.put(item)

    def get(self, timeout: float | None = None) -> RequestOutput:
        item = self._sync_q.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aget(self) -> RequestOutput:
        item = await self._async_q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def aoutputs(self, on_abandon: Callable[[], Any]) -> AsyncIterator[RequestOutput]:
        """Each output up to the finished one; `on_abandon()` when the consumer stops first."""
        try:
            while True:
                out = await self.aget()
                yield out
                if out.finished:
                    return
        finally:
            if not self.closed:  # the consumer went away (e.g. a client disconnect)
                on_abandon()
