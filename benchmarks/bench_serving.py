"""Serving benchmark, in the manner of `vllm bench serve`: what does the HTTP server cost?

A thin CLI over the library's load generator (`workbench.loadgen`, also `workbench bench`): one
workload runs on the same engine in-process through `engine.astream` ("direct") and over HTTP
through the OpenAI-compatible server ("server": `serve()` in a background thread of this process,
as in a notebook; an httpx async client streaming `/v1/completions` over SSE), then the server's
overhead, direct -> server, with the TTFT p50 difference in ms as the headline.

Workload and metrics: see `workbench/loadgen.py` (`--num-requests` 64 prompts of 16..64 tokens cut
from real text, greedy, `ignore_eos`, `--max-tokens` 32; Poisson arrivals at `--request-rate`, at
most `--max-concurrency` in flight; request/s, output tok/s, TTFT/TPOT/ITL mean, median, p99).
Each run first sends a slice of the workload (compiling shapes) and prints that time apart.
Numbers on a shared 2-core box are noisy: compare the two columns of one run, not runs with each
other; `--max-concurrency 1` isolates the per-request overhead.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_serving.py --engine vinference \\
        --num-requests 16 --max-concurrency 4 --max-tokens 32
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402, N812 - the other scripts say C too
from workbench.engines.catalog import engine_class, engine_kinds  # noqa: E402
from workbench.loading.loader import load_model  # noqa: E402
from workbench.loadgen import PROMPT_LENS, run_bench, summarize  # noqa: E402, F401
from workbench.server import serve  # noqa: E402


def report(direct: dict[str, float], server: dict[str, float]) -> None:
    rows = [(key, f"{direct[key]:.2f}", f"{server[key]:.2f}", f"{server[key] - direct[key]:+.2f}")
            for key in direct]
    C.print_table(("metric", "direct", "server", "server - direct"), rows,
                  title="direct engine.astream vs the HTTP server")
    ttft = server["TTFT p50 (ms)"] - direct["TTFT p50 (ms)"]
    ratio = server["output tok/s"] / direct["output tok/s"]
    print(f"\nTTFT p50 overhead of the server: {ttft:+.1f} ms; "
          f"output tok/s server/direct: {ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=engine_kinds(), default="vsurge")
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
    t0 = time.perf_counter()
    lm = load_model(args.model)
    engine = engine_class(args.engine)(lm, max_model_len=args.max_model_len)
    engine.start()
    C.log(f"{lm.name} loaded in {time.perf_counter() - t0:.1f} s; engine {args.engine}")
    kw = dict(num_requests=args.num_requests, request_rate=args.request_rate,
              max_concurrency=args.max_concurrency, max_tokens=args.max_tokens, seed=args.seed)
    handle = serve(engine, stop_engines=False)
    try:
        direct = run_bench(engine, **kw)
        C.log(f"direct run done (warm-up {direct.warmup_s:.1f} s)")
        server = run_bench(engine, url=handle.url, model=lm.name, **kw)
        C.log(f"server run done (warm-up {server.warmup_s:.1f} s)")
    finally:
        handle.stop()
        engine.close()
    print(f"\n{args.num_requests} requests, prompts {PROMPT_LENS[0]}..{PROMPT_LENS[1]} tokens, "
          f"{args.max_tokens} output tokens each, max concurrency {args.max_concurrency}, "
          f"request rate {args.request_rate}/s, engine {args.engine}")
    report(direct.metrics, server.metrics)


if __name__ == "__main__":
    main()
