"""Memory of the default server on the embedded model, per engine, each in a fresh process:
RSS after loading, idle after the server starts, peak while serving a burst (16 concurrent
streaming requests, 32 tokens), the process's peak (ru_maxrss, loading and compiling included),
the KV bytes reserved (from /metrics), and RSS growth over server start/stop cycles.

    .venv/bin/python benchmarks/bench_memory.py [--engines vinference,vsurge,esurge] [--cycles 6]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import itertools
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C

MB = 1 << 20


def child(engine_name: str, cycles: int) -> dict:
    import httpx

    from workbench.server.cli import engine_class, load_model
    from workbench.server.handle import serve
    from workbench.server.health import peak_rss_bytes, rss_bytes

    model = load_model("embedded")
    loaded = rss_bytes()
    engine = engine_class(engine_name)(model, max_model_len=None)  # as `workbench serve` does
    handle = serve({"m": engine})
    time.sleep(1.0)
    gc.collect()
    idle = rss_bytes()
    peak, stop = [idle], threading.Event()

    def sample():
        while not stop.wait(0.05):
            peak.append(rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    body = {"model": "m", "prompt": "Once upon a time", "max_tokens": 32, "stream": True,
            "temperature": 0, "ignore_eos": True}

    def one(_):
        with httpx.stream("POST", f"{handle.url}/v1/completions", json=body, timeout=600) as r:
            return r.status_code, sum(1 for _ in r.iter_lines())

    with cf.ThreadPoolExecutor(16) as pool:
        codes = [c for c, _ in pool.map(one, range(16))]
    stop.set()
    sampler.join()
    metrics = httpx.get(f"{handle.url}/metrics").text
    kv = [int(float(line.split()[-1])) for line in metrics.splitlines()
          if line.startswith("workbench:kv_cache_reserved_bytes{")]
    handle.stop()
    after = []
    # one client for every cycle: httpx.post() builds a Client (and an SSL context from certifi's
    # bundle) per call, memory of the measuring side that would read as the server's growth
    with httpx.Client(timeout=600) as client:
        for _ in range(cycles):  # server start/stop cycles on the same engine
            h = serve({"m": engine})
            client.post(f"{h.url}/v1/completions",
                        json={**body, "stream": False, "max_tokens": 2})
            h.stop()
            gc.collect()
            after.append(rss_bytes())
    engine.close()
    growth = [(b - a) / MB for a, b in itertools.pairwise(after[1:])]
    return {"engine": engine_name, "ok": codes.count(200), "loaded_mb": loaded / MB,
            "idle_mb": idle / MB, "serving_peak_mb": max(peak) / MB,
            "process_peak_mb": peak_rss_bytes() / MB, "kv_reserved_mb": (kv[0] if kv else 0) / MB,
            "cycle_rss_mb": [round(x / MB, 1) for x in after],
            "growth_per_cycle_after_first_mb": round(sum(growth) / max(len(growth), 1), 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engines", default="vinference,vsurge,esurge")
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cycles)))
        return
    rows = C.run_per_engine(__file__, args.engines.split(","), ["--cycles", str(args.cycles)])
    print("\n| engine | loaded MB | idle MB | serving peak MB | process peak MB | KV reserved MB |"
          " growth/cycle MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['loaded_mb']:.0f} | {r['idle_mb']:.0f} | "
              f"{r['serving_peak_mb']:.0f} | {r['process_peak_mb']:.0f} | "
              f"{r['kv_reserved_mb']:.0f} | {r['growth_per_cycle_after_first_mb']:.2f} |")


if __name__ == "__main__":
    main()
