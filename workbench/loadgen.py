"""Load generator in the manner of `vllm bench serve`: N requests at a rate or a max concurrency,
sent to an engine directly or to an OpenAI-compatible server over HTTP, with vLLM's metrics.

    result = run_bench(engine, num_requests=32, max_concurrency=8, max_tokens=32)       # direct
    result = run_bench(url="http://127.0.0.1:8000", model="SmolLM2-135M-Instruct",
                       tokenizer=lm.tokenizer)                                           # HTTP
    result.metrics["output tok/s"], result.metrics["TTFT p50 (ms)"]

Workload: `num_requests` prompts cut from real English text (standard-library docstrings, so it
works offline) with lengths uniform in `prompt_lens` (seeded), sent as token ids when a tokenizer
is known (the engine's, or `tokenizer=`; random ids for a model without one), else as text of
about 4 characters per token; greedy,
`ignore_eos`, `max_tokens` output tokens each. Requests arrive at `request_rate` per second
(Poisson, seeded; inf = all at once), at most `max_concurrency` in flight.

Metrics (`summarize`): request/s, output tok/s, and TTFT (first token-bearing chunk), TPOT
((latency - TTFT) / (tokens - 1)) and ITL (the gap between token-bearing chunks, one gap per chunk
as vLLM measures it) as mean, median (p50) and p99 in ms; failed requests are counted and left
out of the latency figures. `warmup=True` first sends a slice of the workload (compiling the
shapes it needs) and reports that time apart as `warmup_s`.

`run_bench` may be called from a notebook cell (where an event loop is already running): it then
runs its own loop in a worker thread. `on_result(done, total)` reports progress from that loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import statistics
import threading
import time
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from workbench.sampling_params import SamplingParams

PROMPT_LENS = (16, 64)

OneRequest = Callable[[Any], Awaitable["RequestResult"]]


@dataclasses.dataclass
class RequestResult:
    """One request as its client saw it (seconds)."""

    ttft: float | None = None
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.error or self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class _Clock:
    """Timestamps the token-bearing chunks of one request into a RequestResult."""

    def __init__(self) -> None:
        self.result = RequestResult()
        self.t0 = time.perf_counter()
        self._last: float | None = None

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self.result.ttft = now - self.t0
        else:
            self.result.itl.append(now - self._last)
        self._last = now

    def done(self, output_tokens: int, error: str | None = None) -> RequestResult:
        self.result.latency = time.perf_counter() - self.t0
        self.result.output_tokens = output_tokens
        self.result.error = error
        return self.result


# ---- the workload ---------------------------------------------------------------------------------


def corpus_text() -> str:
    """Real English text available offline: docstrings of standard-library modules."""
    import argparse, collections, concurrent.futures, contextlib as cl, dataclasses as dc  # noqa: E401
    import decimal, email, fractions, functools, http.client, inspect, json as js, logging  # noqa: E401
    import pathlib, pickle, re, shutil, socket, subprocess, tarfile, typing, unittest, zipfile  # noqa: E401

    mods = [argparse, collections, concurrent.futures, cl, dc, decimal, email, fractions, functools,
            http.client, inspect, js, logging, pathlib, pickle, re, shutil, socket, subprocess,
            tarfile, threading, typing, unittest, zipfile]
    parts = []
    for m in mods:
        parts.append(m.__doc__ or "")
        for name in sorted(dir(m)):
            doc = getattr(getattr(m, name, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200:
                parts.append(doc)
    return "\n\n".join(parts)


def text_token_prompts(tokenizer, lengths: Sequence[int], seed: int = 0,
                       vocab_size: int | None = None) -> list[list[int]]:
    """Token-id prompts of the given lengths cut at random offsets from real text (tokenized once).
    Without a tokenizer (random-weight models), seeded random ids below `vocab_size`."""
    rng = np.random.default_rng(seed)
    if tokenizer is None:
        if vocab_size is None:
            raise ValueError("random token prompts need vocab_size")
        return [rng.integers(10, vocab_size, size=n).tolist() for n in lengths]
    ids = tokenizer.encode(corpus_text(), add_special_tokens=False)
    need = max(lengths)
    if len(ids) < 2 * need:
        ids = ids * (2 * need // max(len(ids), 1) + 1)
    return [ids[o:o + n] for n, o in zip(lengths, rng.integers(0, len(ids) - need, len(lengths)))]


def text_prompts(lengths: Sequence[int], seed: int = 0) -> list[str]:
    """Text prompts of about 4 characters per token (for a server whose tokenizer is unknown)."""
    text = " ".join(corpus_text().split())
    rng = np.random.default_rng(seed)
    need = 4 * max(lengths)
    return [text[o:o + 4 * n] for n, o in zip(lengths, rng.integers(0, len(text) - need,
                                                                    len(lengths)))]


def workload(num_requests: int, prompt_lens: tuple[int, int] = PROMPT_LENS, *, seed: int = 0,
             tokenizer=None, vocab_size: int | None = None, as_text: bool = False) -> list:
    lo, hi = prompt_lens
    if not 1 <= lo <= hi:
        raise ValueError(f"prompt_lens must be (low, high) with 1 <= low <= high, got {prompt_lens}")
    lens = np.random.default_rng(seed).integers(lo, hi + 1, num_requests).tolist()
    if as_text:
        return text_prompts(lens, seed)
    return text_token_prompts(tokenizer, lens, seed=seed, vocab_size=vocab_size)


# ---- clients ------------------------------------------------------------------------------------


def direct_client(engine, params: SamplingParams) -> OneRequest:
    """One request through `engine.astream`."""

    async def one(prompt) -> RequestResult:
        clock, n = _Clock(), 0
        try:
            async for out in engine.astream(prompt, params):
                if out.outputs[0].delta_token_ids:
                    clock.chunk()
                n = len(out.outputs[0].token_ids)
        except Exception as e:  # noqa: BLE001 - counted as a failed request
            return clock.done(n, f"{type(e).__name__}: {e}")
        return clock.done(n)

    return one


def http_client(client, model: str, max_tokens: int) -> OneRequest:
    """One streaming `/v1/completions` request through an `httpx.AsyncClient`."""

    async def one(prompt) -> RequestResult:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        clock, n, chunks = _Clock(), 0, 0
        try:
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode(errors="replace")[:200]
                    return clock.done(0, f"HTTP {resp.status_code}: {detail}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return clock.done(n, f"stream error: {chunk['error'].get('message')}")
                    if chunk.get("usage"):
                        n = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        clock.chunk()
                        chunks += 1
        except Exception as e:  # noqa: BLE001 - counted as a failed request
            return clock.done(n, f"{type(e).__name__}: {e}")
        return clock.done(n or chunks)

    return one


# ---- driving and summarizing -----------------------------------------------------------------------


async def drive(prompts: list, one: OneRequest, rate: float, max_concurrency: int, seed: int,
                on_result: Callable[[int, int], None] | None = None
                ) -> tuple[list[RequestResult], float]:
    """`one(prompt)` for every prompt, Poisson arrivals at `rate`, bounded concurrency."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, len(prompts)) if math.isfinite(rate) \
        else np.zeros(len(prompts))
    sem = asyncio.Semaphore(max_concurrency)
    done = 0

    async def limited(prompt) -> RequestResult:
        nonlocal done
        async with sem:
            result = await one(prompt)
        done += 1
        if on_result is not None:
            on_result(done, len(prompts))
        return result

    t0 = time.perf_counter()
    tasks = []
    for prompt, gap in zip(prompts, gaps, strict=True):
        tasks.append(asyncio.create_task(limited(prompt)))
        if gap:
            await asyncio.sleep(gap)
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - t0


def summarize(results: list[RequestResult], duration: float) -> dict[str, float]:
    """vLLM's bench metrics over the successful requests (failed ones are counted)."""
    ok = [r for r in results if r.error is None]

    def stats(name: str, values: list[float]) -> dict[str, float]:
        ms = np.asarray([1e3 * v for v in values], dtype=np.float64)
        if not len(ms):
            return {f"{name} mean (ms)": math.nan, f"{name} p50 (ms)": math.nan,
                    f"{name} p99 (ms)": math.nan}
        return {f"{name} mean (ms)": float(statistics.fmean(ms)),
                f"{name} p50 (ms)": float(np.percentile(ms, 50)),
                f"{name} p99 (ms)": float(np.percentile(ms, 99))}

    out_tokens = sum(r.output_tokens for r in ok)
    return {"requests": len(results), "failed": len(results) - len(ok),
            "duration (s)": duration,
            "requests/s": len(ok) / duration if duration > 0 else math.nan,
            "output tok/s": out_tokens / duration if duration > 0 else math.nan,
            **stats("TTFT", [r.ttft for r in ok if r.ttft is not None]),
            **stats("TPOT", [t for r in ok if (t := r.tpot) is not None]),
            **stats("ITL", [x for r in ok for x in r.itl])}


@dataclasses.dataclass
class BenchResult:
    """One load-generator run against one target."""

    target: str
    via: str  # "direct" | "http"
    num_requests: int
    request_rate: float
    max_concurrency: int
    max_tokens: int
    metrics: dict[str, float]
    results: list[RequestResult]
    warmup_s: float = 0.0

    def row(self) -> dict[str, Any]:
        """A flat dict for tables: target, via, then the metrics."""
        return {"target": self.target, "via": self.via, **self.metrics}


def run_async(coro):
    """Run a coroutine to completion from sync code, even inside a notebook's running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="loadgen", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_bench(engine=None, *, url: str | None = None, model: str | None = None,
              api_key: str | None = None, tokenizer=None, num_requests: int = 32,
              request_rate: float = math.inf, max_concurrency: int = 8, max_tokens: int = 32,
              prompt_lens: tuple[int, int] = PROMPT_LENS, seed: int = 0, warmup: bool = True,
              name: str | None = None, timeout: float = 600.0,
              on_result: Callable[[int, int], None] | None = None) -> BenchResult:
    """Run the workload against `engine` (direct) or the server at `url` (HTTP); see the module
    docstring. Over HTTP, `model` is the served name (default: the engine's model name)."""
    for field, value, low in (("num_requests", num_requests, 1),
                              ("max_concurrency", max_concurrency, 1),
                              ("max_tokens", max_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
    if not (isinstance(request_rate, (int, float)) and request_rate > 0):
        raise ValueError(f"request_rate must be > 0 (inf: all at once), got {request_rate!r}")
    if engine is None and url is None:
        raise ValueError("run_bench needs an engine (direct) or a url (HTTP)")
    if url is not None and model is None:
        if engine is None:
            raise ValueError("over HTTP, pass model= (the served model name)")
        model = engine.model.name
    if tokenizer is None and engine is not None:
        tokenizer = engine.tokenizer
    vocab = engine.model.config.vocab_size if engine is not None else None
    if tokenizer is None and vocab is None:  # a remote server whose tokenizer is unknown
        prompts = workload(num_requests, prompt_lens, seed=seed, as_text=True)
    else:
        prompts = workload(num_requests, prompt_lens, seed=seed, tokenizer=tokenizer,
                           vocab_size=vocab)
    via = "http" if url is not None else "direct"
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def main() -> tuple[list[RequestResult], float, float]:
        if url is None:
            one = direct_client(engine, params)
            return await _measure(one)
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_concurrency + 8,
                              max_keepalive_connections=max_concurrency + 8)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits,
                                     headers=headers) as client:
            return await _measure(http_client(client, model, max_tokens))

    async def _measure(one: OneRequest):
        t0 = time.perf_counter()
        if warmup:
            await drive(prompts[:2 * max_concurrency], one, math.inf, max_concurrency, seed)
        warm = time.perf_counter() - t0
        results, duration = await drive(prompts, one, request_rate, max_concurrency, seed,
                                        on_result)
        return results, duration, warm

    results, duration, warm = run_async(main())
    return BenchResult(target=name or model or getattr(engine, "engine_name", "engine"), via=via,
                       num_requests=num_requests, request_rate=request_rate,
                       max_concurrency=max_concurrency, max_tokens=max_tokens,
                       metrics=summarize(results, duration), results=results, warmup_s=warm)
