"""`Generation`: the engine requests behind one API call, merged into one stream of outputs.

An API call with P prompts runs P engine requests (`engine.astream`, each carrying `n` completions)
concurrently, one asyncio task each. Their outputs are merged in arrival order as
`(prompt_index, RequestOutput)` pairs.

Contract:
- `await first()` starts the requests and waits for the first output of any of them; an error the
  engine raises before that (bad request, `PromptTooLongError`, `EngineOverloadedError`, ...) is
  raised from `first()` as an `APIError`, so a streaming response can still be a plain JSON error.
- iterating yields every output (the one `first()` saw included); an engine error later is raised
  from the iteration (`APIError` when it maps to one, else the original exception).
- `collect()` runs to the end and returns each prompt's final `RequestOutput`, in prompt order.
- `close()` (synchronous, safe under cancellation, idempotent) cancels the unfinished tasks; a
  cancelled `astream` unwinds and aborts its request in the engine, freeing its slot.
- `cancel(error)` closes it and makes the consumer raise `error` (server shutdown).
  `ActiveGenerations` tracks the generations in flight in one app, so that a server stopping
  can end them all (a 503 for waiting clients, an error event for streams) instead of having
  uvicorn wait for them or kill them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

from workbench.sampling_params import SamplingParams
from workbench.server.errors import APIError, from_engine_exception

_DONE = object()


@dataclass
class PreparedPrompt:
    """A prompt after tokenization: ids for the engine, text for echo (None until needed)."""

    ids: list[int]
    text: str | None


class Generation:
    """See the module docstring."""

    def __init__(self, engine: Any, prompts: list[PreparedPrompt], params: SamplingParams,
                 request_id: str, *, known_params: frozenset[str] = frozenset(),
                 active: ActiveGenerations | None = None, priority: int = 0,
                 tenant: str | None = None):
        self.engine = engine
        # what the engine schedules by: a priority (checked by `params.check_priority`), and a
        # tenant for engines that schedule by tenant
        self._schedule_kwargs: dict[str, Any] = {"priority": priority} if priority else {}
        if tenant is not None and getattr(engine, "supports_tenants", False):
            self._schedule_kwargs["tenant"] = tenant
        self._active = active
        self.prompts = prompts
        self.params = params
        self.request_id = request_id
        self._known_params = known_params
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._peeked: list[tuple[int, Any]] = []  # the output first() waited for
        self._num_done = 0

    def _engine_request_id(self, index: int) -> str:
        return self.request_id if len(self.prompts) == 1 else f"{self.request_id}-{index}"

    async def _pump(self, index: int) -> None:
        prompt = self.prompts[index]
        try:
            stream = self.engine.astream(prompt.ids, self.params,
                                         request_id=self._engine_request_id(index),
                                         prompt_text=prompt.text, **self._schedule_kwargs)
            async with contextlib.aclosing(stream):
                async for out in stream:
                    self._queue.put_nowait((index, out))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put_nowait((index, exc))
        finally:
            self._queue.put_nowait((index, _DONE))

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._pump(i)) for i in range(len(self.prompts))]
            if self._active is not None:
                self._active.add(self)

    async def _next(self) -> tuple[int, Any] | None:
        """The next output, or None when every request is done; raises engine errors."""
        self._start()
        while True:
            if self._peeked:
                index, item = self._peeked.pop()
            elif self._num_done == len(self.prompts):
                return None
            else:
                index, item = await self._queue.get()
            if item is _DONE:
                self._num_done += 1
                continue
            if isinstance(item, BaseException):
                self.close()
                raise from_engine_exception(item, known_params=self._known_params) or item
            return index, item

    async def first(self) -> None:
        """Start, and wait for the first output (raising an early engine error)."""
        item = await self._next()
        if item is not None:
            self._peeked.append(item)

    async def __aiter__(self) -> AsyncIterator[tuple[int, Any]]:
        while (item := await self._next()) is not None:
            yield item

    async def collect(self) -> list[Any]:
        """Run to the end; each prompt's last (finished) RequestOutput, in prompt order."""
        last: list[Any] = [None] * len(self.prompts)
        try:
            async for index, out in self:
                last[index] = out
        finally:
            self.close()
        return last

    def close(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        if self._active is not None:
            self._active.discard(self)

    def cancel(self, error: APIError) -> None:
        self._peeked.clear()
        self._queue.put_nowait((-1, error))
        self.close()


class ActiveGenerations:
    """The generations in flight in one app (used on the event loop's thread only)."""

    def __init__(self) -> None:
        self._live: set[Generation] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, gen: Generation) -> None:
        self._live.add(gen)

    def discard(self, gen: Generation) -> None:
        self._live.discard(gen)

    def cancel_all(self, error: APIError) -> None:
        for gen in list(self._live):
            gen.cancel(error)
