"""The default server under load, per engine (issue 16, sec. 5), each engine in a fresh process.

1. The load test of `tests/test_load.py` at full model size: the embedded model behind
   `workbench serve --engine X`'s defaults, 300 concurrent streaming requests (8 tokens, greedy),
   30 clients that hang up after their first chunk and 20 bad requests, all at once (a first round
   compiles the shapes; the second is measured). Reported: good streams completed, bad requests
   answered as expected, TTFT p50/p99 of the good streams, the round's span, RSS before/peak/after,
   and KV bytes reserved (from /metrics).
2. Where 429s begin: Poisson arrivals of non-streaming 8-token requests at doubling rates
   (`--rates`, `--window` seconds each) against the same engine built with a small waiting queue
   (`--max-waiting`, default 32, so the onset shows within a window on this CPU; the default
   queue of 1024 only moves it later by 1024 / (rate - service rate) seconds). Reported per rate:
   requests sent, 200s, 429s, completions per second.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_load.py [--engines vinference,vsurge,esurge]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C

MB = 1 << 20
PROMPTS = [f"Question {i}: name one thing about the number {i}." for i in range(24)]


async def _poisson(url: str, model: str, rate: float, window: float, seed: int) -> dict:
    import random

    import httpx

    rng = random.Random(seed)
    body = {"model": model, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    codes: list[int] = []
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(i: int):
            try:
                r = await client.post(f"{url}/v1/completions",
                                      json={**body, "prompt": PROMPTS[i % len(PROMPTS)]})
                codes.append(r.status_code)
            except httpx.HTTPError:
                codes.append(-1)

        tasks, start, t, i = [], time.perf_counter(), 0.0, 0
        while t < window:
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            t += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        span = time.perf_counter() - start
    return {"rate": rate, "sent": len(codes), "ok": codes.count(200), "429": codes.count(429),
            "other": len(codes) - codes.count(200) - codes.count(429),
            "completed_per_s": codes.count(200) / span}


def child(name: str, args) -> dict:
    import httpx

    from workbench.load_mix import run_mix, summarize_mix
    from workbench.server.cli import engine_class, load_model
    from workbench.server.handle import serve
    from workbench.server.health import rss_bytes

    model = load_model("embedded")
    engine = engine_class(name)(model, max_model_len=None)  # as `workbench serve` builds it
    handle = serve({"m": engine}, stop_engines=True)
    out: dict = {"engine": name}
    try:
        def mix():
            return asyncio.run(run_mix(handle.url, "m", PROMPTS, good=args.good,
                                       disconnects=args.disconnects, bad=args.bad, max_tokens=8,
                                       max_model_len=engine.max_model_len, timeout=1800))

        t0 = time.perf_counter()
        mix()  # compiles the shapes the mix meets
        out["first_round_s"] = time.perf_counter() - t0
        time.sleep(1.0)
        out["rss_before_mb"] = rss_bytes() / MB
        peak, stop = [rss_bytes()], threading.Event()
        sampler = threading.Thread(target=lambda: [peak.append(rss_bytes())
                                                   for _ in iter(lambda: stop.wait(0.05), True)],
                                   daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        summary = summarize_mix(mix())
        out["span_s"] = time.perf_counter() - t0
        stop.set()
        sampler.join()
        time.sleep(1.0)
        out.update(summary, rss_peak_mb=max(peak) / MB, rss_after_mb=rss_bytes() / MB)
        metrics = httpx.get(f"{handle.url}/metrics", timeout=60).text
        kv = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("workbench:kv_cache_reserved_bytes{")]
        out["kv_reserved_mb"] = (kv[0] if kv else 0.0) / MB
    finally:
        handle.stop()
        engine.close()

    engine = engine_class(name)(model, max_model_len=None, max_waiting=args.max_waiting)
    handle = serve({"m": engine}, stop_engines=True)
    try:
        asyncio.run(_poisson(handle.url, "m", 4.0, 3.0, seed=1))  # warm-up
        steps = []
        for k, rate in enumerate(float(r) for r in args.rates.split(",")):
            steps.append(asyncio.run(_poisson(handle.url, "m", rate, args.window, seed=k)))
            print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
            if steps[-1]["429"] > 0:
                break
        out["rates"] = steps
    finally:
        handle.stop()
        engine.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="vinference,vsurge,esurge")
    p.add_argument("--good", type=int, default=300)
    p.add_argument("--disconnects", type=int, default=30)
    p.add_argument("--bad", type=int, default=20)
    p.add_argument("--rates", default="1,2,4,8,16,32,64")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--max-waiting", type=int, default=32)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    rows = C.run_per_engine(__file__, args.engines.split(","), [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("child", "engines")])
    print("\n| engine | good ok | bad as expected | span s | TTFT p50 s | TTFT p99 s | RSS before"
          " / peak / after MB | KV reserved MB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['good_ok']}/{r['good']} | {r['bad_as_expected']}/{r['bad']}"
              f" | {r['span_s']:.1f} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | "
              f"{r['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} | "
              f"{r['kv_reserved_mb']:.0f} |")
    print(f"\nWhere 429s begin (max_waiting {args.max_waiting}, {args.window:.0f} s windows):\n")
    print("| engine | rate req/s | sent | 200 | 429 | other | completed/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        for s in r["rates"]:
            print(f"| {r['engine']} | {s['rate']:g} | {s['sent']} | {s['ok']} | {s['429']} | "
                  f"{s['other']} | {s['completed_per_s']:.1f} |")


if __name__ == "__main__":
    main()
