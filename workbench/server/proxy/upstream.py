"""An upstream OpenAI-compatible server behind the proxy: one pooled `httpx.AsyncClient`, its
health probe, and forwarding (see `backend.py` for the contract every backend keeps).

Forwarding: the client's JSON body with `model` set to the upstream's name, every other field as
sent, with the upstream's own key (from its environment variable), never the client's. Requests
go from the upstream's `httpx.AsyncClient` straight to its transport, the connection pool (the
client's URL joining and cookie jar are a proxy's largest cost per request otherwise, and a proxy
wants no cookies); health probes use the client. A JSON answer
is passed through as it came (its `model` is the upstream's). A stream is read event by event and
each event is sent on as soon as it is complete (nothing is buffered past one event); the
upstream's `[DONE]` ends it.

Failures, by when they happen:
- before the first byte reaches the client (no connection, `connect`/`first_byte`/`total` timeout,
  HTTP 5xx or 429, a stream that closes or is malformed before its first event, or begins with an
  error event): `BackendFailure`, and the router tries the next backend. A 4xx other than 429 is
  the client's answer: passed on unchanged (status and body).
- after the stream began (closed early, malformed, a transport error, `total` exceeded): the
  client gets one OpenAI error event and `[DONE]`, never a hang; the upstream connection is closed.
- the client going away closes the upstream request at once (the upstream server sees the
  disconnect and aborts the generation); so does the proxy stopping (`Interruptible`).
The upstream key never reaches a response, an error or a log: it lives in the client's default
headers only, and any answer that echoes it has it replaced by `***`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import anyio
import httpx
from starlette.responses import Response

from workbench.server.errors import APIError
from workbench.server.proxy.backend import BACKEND_HEADER, Attempt, Backend, BackendFailure, \
    Call, Target
from workbench.server.proxy.health import BackendHealth
from workbench.server.proxy.spec import UpstreamSpec
from workbench.server.proxy.sse import DONE, MalformedSSE, SSEReader, carries_text, event_bytes
from workbench.server.streaming import SSEResponse, sse

_SSE_DONE = event_bytes(DONE)
_REDACTED = b"***"


class Interruptible:
    """Deadlines for one upstream exchange that the server can also end at once: a wait inside
    `within(when)` raises `TimeoutError` at `when` (loop time), or as soon as `cancel(error)` is
    called (by `ActiveGenerations.cancel_all` when the server stops), with `.error` set."""

    def __init__(self) -> None:
        self.error: APIError | None = None
        self._timeout: asyncio.Timeout | None = None

    def within(self, when: float) -> _Within:
        return _Within(self, when)

    def cancel(self, error: APIError) -> None:
        self.error = error
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())


class _Within:
    __slots__ = ("_owner", "_timeout")

    def __init__(self, owner: Interruptible, when: float):
        self._owner = owner
        if owner.error is not None:
            when = asyncio.get_running_loop().time()
        self._timeout = asyncio.timeout_at(when)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._owner._timeout = self._timeout

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._owner._timeout = None
        return await self._timeout.__aexit__(*exc)


def _error_event(message: str, code: str) -> bytes:
    body = APIError(502, message, type="server_error", code=code).body()
    return sse(body).encode()


class Upstream(Backend):
    """An OpenAI-compatible server; see the module docstring."""

    def __init__(self, spec: UpstreamSpec, name: str, health: BackendHealth,
                 health_timeout: float):
        super().__init__(name, health)
        self.url = spec.url
        key = spec.api_key()  # from the environment, now: a missing variable fails the build
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._post_headers = {"Content-Type": "application/json", **self._headers}
        self._urls = {e: httpx.URL(f"{self.url}/{e}") for e in ("completions",
                                                                 "chat/completions")}
        self._secret = key.encode() if key else None
        self._max_connections = spec.max_connections
        self._health_path = spec.health_path
        self._health_timeout = health_timeout
        self._client: httpx.AsyncClient | None = None
        self._transport: httpx.AsyncHTTPTransport | None = None

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.url!r})"

    async def start(self) -> None:
        n = self._max_connections
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), trust_env=False)
        self._client = httpx.AsyncClient(
            base_url=self.url + "/", headers=self._headers, trust_env=False,
            transport=self._transport, timeout=httpx.Timeout(self._health_timeout))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()  # and its transport
            self._client = self._transport = None

    async def probe(self) -> bool:
        async with asyncio.timeout(self._health_timeout):
            r = await self._client.get(self._health_path.lstrip("/"))
            return r.status_code == 200

    def _scrub(self, data: bytes) -> bytes:
        if self._secret is not None and self._secret in data:
            return data.replace(self._secret, _REDACTED)
        return data

    # ---- forwarding -------------------------------------------------------------------------
    async def forward(self, call: Call, target: Target, attempt: Attempt) -> Response:
        t = target.timeouts
        now = asyncio.get_running_loop().time()
        first_deadline = now + (t.first_byte if call.stream else t.total)
        end_deadline = now + t.total
        body = dict(call.body)
        body["model"] = target.model
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        # Straight to the pool: the client's URL joining and cookie jar cost ~0.7 ms a request.
        request = httpx.Request(
            "POST", self._urls[call.endpoint], content=content,
            headers=self._post_headers,
            extensions={"timeout": {"connect": t.connect, "read": None, "write": t.total,
                                    "pool": t.first_byte if call.stream else t.total}})
        guard = Interruptible()
        active = call.request.app.state.generations
        active.add(guard)
        response: httpx.Response | None = None
        relaying = False
        try:
            try:
                async with guard.within(first_deadline):
                    response = await self._transport.handle_async_request(request)
                self.health.record_activity()
                if response.status_code != 200:
                    async with guard.within(end_deadline):
                        data = await response.aread()
                    return self._not_ok(response, data, attempt)
                if not call.stream:
                    async with guard.within(end_deadline):
                        data = await response.aread()
                    _check_json(data)
                    attempt.succeed()
                    return Response(self._scrub(data), media_type="application/json",
                                    headers={BACKEND_HEADER: self.name})
                chunks = response.aiter_bytes()
                reader = SSEReader()
                first: list[tuple[bytes, dict | None]] = []
                async with guard.within(first_deadline):
                    while not first:
                        data = await anext(chunks, None)
                        if data is None:  # a JSON body or a cut-off event: malformed
                            raise BackendFailure(
                                "malformed" if reader.pending else "stream",
                                "the stream ended before its first event")
                        first = reader.feed(data)
            except (TimeoutError, httpx.HTTPError, MalformedSSE, ValueError) as exc:
                raise self._failure(exc, guard, t.first_byte if call.stream else t.total) \
                    from None
            if first[0][1] is not None and "error" in first[0][1]:
                raise BackendFailure("stream", "the stream began with an error event")
            relaying = True
            return SSEResponse(self._relay(response, chunks, reader, first, attempt, guard,
                                           end_deadline, t.total),
                               headers={BACKEND_HEADER: self.name})
        finally:
            if not relaying:
                active.discard(guard)
                if response is not None:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()

    def _not_ok(self, response: httpx.Response, data: bytes, attempt: Attempt) -> Response:
        status = response.status_code
        if status == 429:
            raise BackendFailure("http_429", "HTTP 429", marks_down=False,
                                 retry_after=response.headers.get("retry-after"))
        if status >= 500:
            raise BackendFailure("http_5xx", f"HTTP {status}")
        if not 400 <= status < 500:
            raise BackendFailure("malformed", f"unexpected HTTP {status}")
        attempt.fail("http_4xx", f"HTTP {status}")
        return Response(self._scrub(data), status_code=status,
                        media_type=response.headers.get("content-type", "application/json"),
                        headers={BACKEND_HEADER: self.name})

    @staticmethod
    def _failure(exc: BaseException, guard: Interruptible, seconds: float) -> Exception:
        if isinstance(exc, BackendFailure):
            return exc
        if isinstance(exc, TimeoutError):
            if guard.error is not None:
                return guard.error  # the server is stopping: not a failure of this backend
            return BackendFailure("timeout", f"no answer within {seconds:g} s")
        if isinstance(exc, httpx.PoolTimeout):  # every pooled connection busy: alive, not down
            return BackendFailure("timeout", "no free connection", marks_down=False)
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return BackendFailure("connect", f"cannot connect ({type(exc).__name__})")
        if isinstance(exc, httpx.TimeoutException):
            return BackendFailure("timeout", type(exc).__name__)
        if isinstance(exc, (MalformedSSE, ValueError)):
            return BackendFailure("malformed", str(exc)[:200])
        return BackendFailure("stream", f"the connection broke ({type(exc).__name__})")

    async def _relay(self, response: httpx.Response, chunks: AsyncIterator[bytes],
                     reader: SSEReader, pending: list[tuple[bytes, dict | None]],
                     attempt: Attempt, guard: Interruptible, end_deadline: float,
                     total: float) -> AsyncIterator[bytes]:
        """The stream after its first event: each event sent on as it completes."""
        failure: tuple[str, str, str] | None = None  # (kind, message, code)
        try:
            try:
                while True:
                    for payload, obj in pending:
                        if obj is None:  # [DONE]
                            attempt.succeed()
                            yield _SSE_DONE
                            await _drain(chunks, guard)
                            return
                        if attempt.wants_ttft and carries_text(obj):
                            attempt.first_text()
                        yield event_bytes(self._scrub(payload))
                    async with guard.within(end_deadline):
                        data = await anext(chunks, None)
                    if data is None:
                        failure = ("stream", "The upstream closed the stream before it ended",
                                   "upstream_stream_ended")
                        break
                    self.health.record_activity()
                    pending = reader.feed(data)
            except TimeoutError:
                if guard.error is not None:
                    attempt.fail("cancelled", "server stopping")
                    yield sse(guard.error.body()).encode()
                    yield _SSE_DONE
                    return
                failure = ("timeout", f"The upstream did not finish within {total:g} s",
                           "upstream_timeout")
            except MalformedSSE as exc:
                failure = ("malformed", f"The upstream sent a malformed stream: {exc}",
                           "upstream_malformed_stream")
            except httpx.HTTPError as exc:
                failure = ("stream", f"The upstream connection broke: {type(exc).__name__}",
                           "upstream_stream_broken")
            kind, message, code = failure
            attempt.fail(kind, message, marks_down=True)
            yield _error_event(message, code)
            yield _SSE_DONE
        finally:
            call_active = attempt.call.request.app.state.generations
            call_active.discard(guard)
            if not attempt.done:  # the client went away
                attempt.fail("cancelled", "client disconnected")
            with anyio.CancelScope(shield=True):
                await response.aclose()


async def _drain(chunks: AsyncIterator[bytes], guard: Interruptible,
                 seconds: float = 1.0, limit: int = 65536) -> None:
    """Read what follows [DONE] (normally only the end of the chunked body), so that the
    connection goes back to the pool instead of being closed; give up on a chatty upstream."""
    loop = asyncio.get_running_loop()
    received = 0
    try:
        async with guard.within(loop.time() + seconds):
            async for data in chunks:
                received += len(data)
                if received > limit:
                    return
    except (TimeoutError, httpx.HTTPError):
        pass


def _check_json(data: bytes) -> None:
    """A non-streamed answer must be one JSON object (else: malformed, try the next backend)."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise MalformedSSE("the answer is not a JSON object")
