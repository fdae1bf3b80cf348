"""Recovery after a flood of cancelled streams (issue 18): how long the next request waits.

Serves the embedded model with one engine, measures a short request on the idle (warm) server,
then opens N streaming requests at once, each cancelled by its client after its first token
(or, with --cancel-at 0, after --cancel-after seconds, most of them still queued), and sends the same short request
right after the last client went away. Prints the idle latency, the latency after the flood, their
ratio, and how many of the flood's requests the engine still held when the probe was sent.

    python benchmarks/bench_cancel_flood.py [--engine vsurge] [--num 200] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

from workbench.engines.catalog import engine_class
from workbench.loading.loader import load_model
from workbench.server import serve


def probe(url: str, max_tokens: int) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", timeout=300, json={
        "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True})
    r.raise_for_status()
    return time.perf_counter() - t0


async def flood(url: str, num: int, cancel_at: int, cancel_after: float) -> None:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=num)) as c:
        async def one(i: int) -> None:
            body = {"prompt": f"Story {i}: once upon a time", "max_tokens": 256,
                    "ignore_eos": True, "stream": True}
            async with c.stream("POST", f"{url}/v1/completions", json=body) as r:
                if cancel_at:
                    seen = 0
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            seen += 1
                            if seen >= cancel_at:
                                break
        async def cancelled(i: int) -> None:
            try:
                await asyncio.wait_for(one(i), cancel_after if not cancel_at else None)
            except TimeoutError:
                pass

        await asyncio.gather(*(cancelled(i) for i in range(num)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vsurge")
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cancel-at", type=int, default=1, help="chunks read before cancelling")
    ap.add_argument("--cancel-after", type=float, default=1.0,
                    help="with --cancel-at 0: seconds before every client gives up")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--without-fix", action="store_true",
                    help="measure the engine as before issue 18 (aborts seen only at the next "
                         "driver iteration)")
    args = ap.parse_args()
    if args.without_fix:
        from workbench.engines.request import Request
        Request.abort_requested = property(lambda self: False, lambda self, value: None)
    engine = engine_class(args.engine)(load_model("embedded", progress=False),
                                       max_model_len=args.max_model_len)
    with serve(engine) as h:
        for _ in range(5):
            probe(h.url, args.max_tokens)  # compile, settle
        idle = statistics.median(probe(h.url, args.max_tokens) for _ in range(5))
        t0 = time.perf_counter()
        asyncio.run(flood(h.url, args.num, args.cancel_at, args.cancel_after))
        flood_s = time.perf_counter() - t0
        held = engine.core.num_requests if hasattr(engine, "core") else 0
        after = probe(h.url, args.max_tokens)
        again = probe(h.url, args.max_tokens)
    engine.close()
    print(f"engine={args.engine} flood={args.num} streams cancelled after {args.cancel_at} "
          f"chunk(s) ({flood_s:.1f} s); requests still held when the probe was sent: {held}")
    print(f"idle {idle:.2f} s | after the flood {after:.2f} s ({after / idle:.1f}x) | "
          f"next {again:.2f} s")


if __name__ == "__main__":
    main()
