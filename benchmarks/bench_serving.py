"""Serving benchmark, in the manner of `vllm bench serve`: what does the HTTP server cost?

One workload runs twice on the same engine: in-process through `engine.astream` ("direct") and
over HTTP through the OpenAI-compatible server ("server": `serve()` in a background thread of this
process, as in a notebook; an httpx async client streaming `/v1/completions` over SSE).

Workload: `--num-requests` (64) token-id prompts cut from real English text (lengths uniform in
16..64, seeded), greedy, `ignore_eos`, `--max-tokens` (32) output tokens each. Requests arrive at
`--request-rate` (Poisson, seeded; inf = all at once), at most `--max-concurrency` (8) in flight.

Metrics per run: request throughput, output tokens/s, TTFT (arrival of the first token-bearing
chunk), TPOT ((latency - TTFT) / (output tokens - 1)) and ITL (gap between token-bearing chunks, as
vLLM measures it: a chunk of several tokens is one gap), each as mean, median and p99; then the
server's overhead, direct -> server, with the TTFT p50 difference in ms as the headline.

Before the measured runs, the workload runs once directly (compiling every shape it needs) and a
slice of it through the server (connections, other batch patterns); that time is printed apart.
Numbers on a shared 2-core box are noisy: compare the two columns of one run, not runs with each
other; `--max-concurrency 1` isolates the per-request overhead.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_serving.py --engine vinference \\
        --num-requests 16 --max-concurrency 4 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402, N812 - the other scripts say C too
from workbench.sampling_params import SamplingParams  # noqa: E402
from workbench.server import serve  # noqa: E402
from workbench.server.cli import engine_class, load_model  # noqa: E402

PROMPT_LENS = (16, 64)


@dataclass
class Result:
    """One request as its client saw it (seconds)."""

    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class Clock:
    """Timestamps token-bearing chunks of one request into a Result."""

    def __init__(self) -> None:
        self.result = Result()
        self.t0 = time.perf_counter()
        self._last: float | None = None

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self.result.ttft = now - self.t0
        else:
            self.result.itl.append(now - self._last)
        self._last = now

    def done(self, output_tokens: int) -> Result:
        self.result.latency = time.perf_counter() - self.t0
        self.result.output_tokens = output_tokens
        return self.result


def direct_request(engine, params: SamplingParams):
    async def one(prompt: list[int]) -> Result:
        clock, n = Clock(), 0
        async for out in engine.astream(prompt, params):
            if out.outputs[0].delta_token_ids:
                clock.chunk()
            n = len(out.outputs[0].token_ids)
        return clock.done(n)
    return one


def server_request(client: httpx.AsyncClient, model: str, max_tokens: int):
    async def one(prompt: list[int]) -> Result:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        clock, n = Clock(), 0
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    n = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    clock.chunk()
        return clock.done(n)
    return one


async def drive(prompts: list[list[int]], one, rate: float, max_concurrency: int, seed: int
                ) -> tuple[list[Result], float]:
    """`one(prompt)` for every prompt, Poisson arrivals at `rate`, bounded concurrency."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, len(prompts)) if math.isfinite(rate) \
        else np.zeros(len(prompts))
    sem = asyncio.Semaphore(max_concurrency)

    async def limited(prompt: list[int]) -> Result:
        async with sem:
            return await one(prompt)

    t0 = time.perf_counter()
    tasks = []
    for prompt, gap in zip(prompts, gaps, strict=True):
        tasks.append(asyncio.create_task(limited(prompt)))
        if gap:
            await asyncio.sleep(gap)
    results = await asyncio.gather(*tasks)
    return results, time.perf_counter() - t0


def summarize(results: list[Result], duration: float) -> dict[str, float]:
    def stats(name: str, values: list[float]) -> dict[str, float]:
        ms = [1e3 * v for v in values]
        mean = statistics.fmean(ms) if ms else float("nan")
        return {f"{name} mean (ms)": mean, f"{name} p50 (ms)": C.percentile(ms, 50),
                f"{name} p99 (ms)": C.percentile(ms, 99)}

    out_tokens = sum(r.output_tokens for r in results)
    return {"requests/s": len(results) / duration, "output tok/s": out_tokens / duration,
            **stats("TTFT", [r.ttft for r in results]),
            **stats("TPOT", [t for r in results if (t := r.tpot) is not None]),
            **stats("ITL", [x for r in results for x in r.itl])}


def report(direct: dict[str, float], server: dict[str, float]) -> None:
    rows = [(key, f"{direct[key]:.2f}", f"{server[key]:.2f}", f"{server[key] - direct[key]:+.2f}")
            for key in direct]
    C.print_table(("metric", "direct", "server", "server - direct"), rows,
                  title="direct engine.astream vs the HTTP server")
    ttft = server["TTFT p50 (ms)"] - direct["TTFT p50 (ms)"]
    ratio = server["output tok/s"] / direct["output tok/s"]
    print(f"\nTTFT p50 overhead of the server: {ttft:+.1f} ms; "
          f"output tok/s server/direct: {ratio:.3f}")


async def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    lm = load_model(args.model)
    engine = engine_class(args.engine)(lm, max_model_len=args.max_model_len)
    engine.start()
    C.log(f"{lm.name} loaded in {time.perf_counter() - t0:.1f} s; engine {args.engine}")
    rng = np.random.default_rng(args.seed)
    lens = rng.integers(PROMPT_LENS[0], PROMPT_LENS[1] + 1, args.num_requests).tolist()
    prompts = C.text_token_prompts(lm.tokenizer, lens, seed=args.seed,
                                   vocab_size=lm.config.vocab_size)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    conc, rate, seed = args.max_concurrency, args.request_rate, args.seed
    handle = serve(engine, stop_engines=False)
    try:
        limits = httpx.Limits(max_connections=conc + 8, max_keepalive_connections=conc + 8)
        async with httpx.AsyncClient(base_url=handle.url, timeout=600, limits=limits) as client:
            via_direct = direct_request(engine, params)
            via_server = server_request(client, lm.name, args.max_tokens)
            t0 = time.perf_counter()
            await drive(prompts, via_direct, rate, conc, seed)
            await drive(prompts[:2 * conc], via_server, rate, conc, seed)
            C.log(f"warm-up (compile) {time.perf_counter() - t0:.1f} s")
            direct = summarize(*await drive(prompts, via_direct, rate, conc, seed))
            C.log("direct run done")
            server = summarize(*await drive(prompts, via_server, rate, conc, seed))
    finally:
        handle.stop()
        engine.close()
    print(f"\n{args.num_requests} requests, prompts {PROMPT_LENS[0]}..{PROMPT_LENS[1]} tokens, "
          f"{args.max_tokens} output tokens each, max concurrency {conc}, request rate {rate}/s, "
          f"engine {args.engine}")
    report(direct, server)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("vinference", "vsurge"), default="vsurge")
    p.add_argument("--model", default="embedded")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second (Poisson arrivals); inf sends all at once")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    C.print_environment({"engine": args.engine})
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
