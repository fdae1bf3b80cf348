"""A mixed load against an OpenAI-compatible server: good streams, clients that give up, bad requests.

    results = asyncio.run(run_mix(url, model, prompts, good=300, disconnects=30, bad=20))
    summary = summarize_mix(results)   # counts, TTFT p50/p99 of the good streams, failures

What a load balancer in front of a server sees on a busy day, all sent at once in a seeded
shuffled order:
- `good` streaming completions (greedy, `ignore_eos`, `max_tokens` each) over `prompts` in turn;
  each records its text (the concatenated chunks), its TTFT (first chunk carrying text), its
  status and the finish reason.
- `disconnects` streaming completions whose client closes the connection after the first chunk
  (the server must abort them and free what they held).
- `bad` requests cycling through `BAD_REQUESTS`: each has the status it must get and a body (or
  raw bytes) that is wrong in one way: an integer beyond int32, a lone surrogate, an unknown field,
  a negative `max_tokens`, an unknown model, a prompt longer than the context, ...

`run_mix` never raises for a request's outcome: a failure is recorded in its `MixResult.error`.
The HTTP client is httpx (`AsyncClient`, one connection per request in flight).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import statistics
import time
from typing import Any

import httpx


@dataclasses.dataclass
class MixResult:
    kind: str  # "good", "disconnect" or "bad"
    index: int
    status: int | None = None
    text: str = ""
    ttft: float | None = None
    latency: float | None = None
    finish_reason: str | None = None
    expected_status: int | None = None  # bad requests
    error_code: str | None = None  # bad requests: the envelope's `code`
    error: str | None = None  # what went wrong, from the client's point of view


def bad_requests(model: str, max_model_len: int) -> list[tuple[str, int, Any]]:
    """(name, expected status, body: a dict sent as JSON, or bytes sent raw)."""
    base = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    return [
        ("top_k beyond int32", 400, {**base, "top_k": 10**12}),
        ("lone surrogate", 400, {**base, "prompt": "\ud800 hi"}),
        ("unknown field", 400, {**base, "frobnicate": 1}),
        ("negative max_tokens", 400, {**base, "max_tokens": -1}),
        ("unknown model", 404, {**base, "model": f"{model}-missing"}),
        ("prompt over the context", 400, {**base, "prompt": "hi " * (4 * max_model_len)}),
        ("negative temperature", 400, {**base, "temperature": -1}),
        ("n = 0", 400, {**base, "n": 0}),
        ("17 stop strings", 400, {**base, "stop": [f"s{i}" for i in range(17)]}),
        ("malformed JSON", 400, b'{"model": "' + model.encode() + b'", "prompt": '),
    ]


def _text_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    return "".join(c.get("text") or "" for c in choices)


async def _good(client: httpx.AsyncClient, url: str, body: dict, res: MixResult,
                give_up: bool) -> MixResult:
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            res.status = r.status_code
            if r.status_code != 200:
                res.error = (await r.aread()).decode(errors="replace")[:300]
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    res.error = json.dumps(event["error"])[:300]
                    break
                piece = _text_of(event)
                if piece and res.ttft is None:
                    res.ttft = time.perf_counter() - start
                res.text += piece
                for choice in event.get("choices") or []:
                    res.finish_reason = choice.get("finish_reason") or res.finish_reason
                if give_up:
                    break  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.latency = time.perf_counter() - start
    return res


async def _bad(client: httpx.AsyncClient, url: str, name: str, expected: int, body: Any,
               res: MixResult) -> MixResult:
    res.expected_status = expected
    try:
        # ASCII JSON (a lone surrogate travels as the escape "\\ud800", as a JS client sends it)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await client.post(f"{url}/v1/completions", content=content,
                              headers={"content-type": "application/json"})
        res.status = r.status_code
        try:
            res.error_code = r.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            res.error = f"{name}: no error envelope in {r.text[:200]!r}"
    except httpx.HTTPError as exc:
        res.error = f"{name}: {type(exc).__name__}: {exc}"
    return res


async def run_mix(url: str, model: str, prompts: list[str], *, good: int = 300,
                  disconnects: int = 30, bad: int = 20, max_tokens: int = 8,
                  max_model_len: int = 2048, seed: int = 0,
                  timeout: float = 300.0) -> list[MixResult]:
    """Send the whole mix at once; return one `MixResult` per request (good, disconnect, bad)."""
    if not prompts:
        raise ValueError("run_mix needs at least one prompt")
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    bads = bad_requests(model, max_model_len)
    limits = httpx.Limits(max_connections=good + disconnects + bad + 8,
                          max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        jobs = []
        for i in range(good):
            jobs.append(_good(client, url, {**body, "prompt": prompts[i % len(prompts)]},
                              MixResult("good", i), give_up=False))
        for i in range(disconnects):
            jobs.append(_good(client, url, {**body, "prompt": prompts[i % len(prompts)],
                                            "max_tokens": max(max_tokens, 32)},
                              MixResult("disconnect", i), give_up=True))
        for i in range(bad):
            name, status, payload = bads[i % len(bads)]
            jobs.append(_bad(client, url, name, status, payload, MixResult("bad", i)))
        random.Random(seed).shuffle(jobs)
        return list(await asyncio.gather(*jobs))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize_mix(results: list[MixResult]) -> dict[str, Any]:
    good = [r for r in results if r.kind == "good"]
    ttfts = [r.ttft for r in good if r.ttft is not None]
    return {
        "good": len(good),
        "good_ok": sum(1 for r in good if r.status == 200 and r.error is None),
        "disconnects": sum(1 for r in results if r.kind == "disconnect"),
        "bad": sum(1 for r in results if r.kind == "bad"),
        "bad_as_expected": sum(1 for r in results if r.kind == "bad"
                               and r.status == r.expected_status and r.error is None),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_p99_s": _pct(ttfts, 0.99),
        "latency_max_s": max((r.latency or 0.0) for r in good) if good else float("nan"),
    }
