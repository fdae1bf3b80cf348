"""Server-sent events and client-disconnect handling.

- `sse(obj)` encodes one event as OpenAI does: `data: {json}\\n\\n`; `SSE_DONE` ends every stream.
- `SSEResponse` streams an async iterator of events (media type text/event-stream) and watches the
  connection while it does: when the client disconnects, the body iterator is cancelled at its
  current `await`, so whatever it awaits (an engine's `astream`) unwinds and aborts its request.
  It does so on every ASGI spec version (Starlette's own `StreamingResponse` stops listening from
  spec 2.4 on and only notices a disconnect at the next write, which may be many tokens later).
- `cancel_on_disconnect(request, coro)` gives a non-streaming handler the same property: the work
  is cancelled as soon as the client goes away, instead of running to completion for nobody.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Awaitable, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_DONE = "data: [DONE]\n\n"
T = TypeVar("T")


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as compact JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SSEResponse(StreamingResponse):
    """A text/event-stream response that is cancelled when the client disconnects."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], headers: dict[str, str] | None = None):
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream_then_stop() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the transport is gone: same as a disconnect
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream_then_stop)
                await _wait_for_disconnect(receive)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # one failing task: raise its error, not a group
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
