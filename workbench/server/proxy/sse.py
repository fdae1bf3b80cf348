"""Reading an upstream's server-sent events incrementally, strictly enough to catch a broken one.

`SSEReader.feed(data: bytes) -> list[(payload, obj)]` returns the data payloads of the events that
`data` completes, each with its parsed JSON object (None for `[DONE]`). An event ends at a blank
line; `\\r\\n`, `\\r` and `\\n` line ends all work. Comment lines (`: keep-alive`) and
`event:`/`id:`/`retry:` fields are dropped; several `data:` lines of one event are joined with
`\\n`. Anything else (a line that is no SSE field, a payload that is neither
`[DONE]` nor a JSON object) raises `MalformedSSE`, so a client never receives what the `openai`
client cannot parse. `DONE` is the payload that ends an OpenAI stream.

`event_bytes(payload)` re-frames a payload as `data: ...\\n\\n` (the payload bytes untouched);
`carries_text(obj)` tells whether a chunk carries generated text (for time to first token).
"""

from __future__ import annotations

import json
from typing import Any

DONE = b"[DONE]"
_IGNORED_FIELDS = (b"event:", b"id:", b"retry:")
_IGNORED_NAMES = (b"event", b"id", b"retry")


class MalformedSSE(ValueError):
    """The upstream sent something that is not an OpenAI event stream."""


class SSEReader:
    """See the module docstring."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes, dict | None]]:
        buf, tail = self._buf + data, b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # maybe half of a \r\n: keep it for the next feed
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = buf.split(b"\n\n")
        self._buf = events.pop() + tail
        out = []
        for event in events:
            item = _payload(event)
            if item is not None:
                out.append(item)
        return out

    @property
    def pending(self) -> bytes:
        """Bytes of an event not finished yet (a stream that ends here ended mid-event)."""
        return self._buf.strip(b"\r\n")


def _payload(event: bytes) -> tuple[bytes, dict | None] | None:
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif not line.startswith(_IGNORED_FIELDS) and line not in _IGNORED_NAMES:
            raise MalformedSSE(f"not an SSE field: {line[:80]!r}")
    if not data:
        return None
    payload = b"\n".join(data)
    if payload == DONE:
        return payload, None
    try:
        obj = json.loads(payload)
    except ValueError:
        raise MalformedSSE(f"an event that is not JSON: {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedSSE(f"an event that is not a JSON object: {payload[:80]!r}")
    return payload, obj


def event_bytes(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def carries_text(obj: Any) -> bool:
    """True for a completion or chat chunk with non-empty text in some choice."""
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta.get("content"):
            return True
    return False
