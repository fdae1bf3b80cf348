"""Two pure ASGI middlewares (no `BaseHTTPMiddleware`, which would break streaming and
disconnect detection): a request body size limit and an optional API key.

`BodySizeLimit(app, max_body_bytes)`: a request whose `Content-Length` or actual streamed body
exceeds the limit gets 413 before the app sees it. The body is read here (at most the limit is
kept) and replayed to the app; an over-long body is drained (up to `drain_limit`) so the client can
read the 413 instead of a reset connection. After the replay, `receive` is the server's own, so
disconnects still reach the app.

`APIKeyAuth(app, api_key, open_paths)`: every path but `open_paths` needs
`Authorization: Bearer <api_key>`, compared in constant time (`hmac.compare_digest`); else 401.
`api_key` is one key, or {name: key} for several named keys: every key is compared (the time does
not tell which matched), and the name of the one that did is put in the request state as
`api_key_name` (eSurge schedules by it: a tenant per key).
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workbench.server.errors import APIError

_BODY_METHODS = {"POST", "PUT", "PATCH"}


async def _send_error(send: Send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class BodySizeLimit:
    """413 for request bodies over `max_body_bytes` (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, drain_limit: int | None = None):
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.drain_limit = drain_limit or max(8 * max_body_bytes, 8 << 20)

    def _too_large(self, size: int | None = None) -> APIError:
        got = f" ({size} bytes)" if size is not None else ""
        return APIError(413, f"Request body too large{got}: the limit is {self.max_body_bytes} "
                        "bytes", code="request_too_large", headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            size = int(declared)
            if size <= self.drain_limit:
                await self._drain(receive)
            await _send_error(send, self._too_large(size))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                if message.get("more_body"):
                    await self._drain(receive, size)
                await _send_error(send, self._too_large())
                return
            chunks.append(body)
            if not message.get("more_body"):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _drain(self, receive: Receive, size: int = 0) -> None:
        while size <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class APIKeyAuth:
    """401 unless `Authorization: Bearer <api_key>` (see the module docstring)."""

    def __init__(self, app: ASGIApp, api_key: str | dict[str, str],
                 open_paths: tuple[str, ...] = ("/health",)):
        keys = api_key if isinstance(api_key, dict) else {None: api_key}
        if not keys or not all(isinstance(k, str) and k for k in keys.values()):
            raise ValueError("api_key must be a non-empty string or a non-empty dict of them")
        if isinstance(api_key, dict) and not all(isinstance(n, str) and n for n in keys):
            raise ValueError("API key names must be non-empty strings")
        self.app = app
        self._expected = [(name, f"Bearer {key}".encode()) for name, key in keys.items()]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        matched = [name for name, expected in self._expected
                   if hmac.compare_digest(given, expected)]  # every key, always
        if not matched:
            missing = not given
            await _send_error(send, APIError(
                401, "Missing API key: send 'Authorization: Bearer <key>'" if missing
                else "Incorrect API key provided", code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"}))
            return
        if matched[0] is not None:
            scope.setdefault("state", {})["api_key_name"] = matched[0]
        await self.app(scope, receive, send)
