"""`workbench bench`: the load generator (`workbench.loadgen`) from the command line, in the manner
of `vllm bench serve`.

    workbench bench --engine vsurge --num-requests 64 --max-concurrency 8       # direct
    workbench bench --engine vsurge --via both                                  # direct and HTTP
    workbench bench --url http://127.0.0.1:8000 --served-model NAME            # any server

Prints one table (a column per run) of request/s, output tok/s, TTFT/TPOT/ITL mean, p50, p99;
`--json` prints the metrics as JSON instead. Hook for `workbench/cli.py`: `add_bench_parser(sub)`,
`run_bench_command(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    from workbench.engines.catalog import engine_kinds

    p = subparsers.add_parser("bench", help="load-test an engine or a server (vLLM's metrics)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="model for a local engine")
    p.add_argument("--engine", choices=engine_kinds(), default="vsurge")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--via", choices=("direct", "http", "both"), default="direct",
                   help="direct engine calls, the HTTP server in this process, or both")
    p.add_argument("--url", default=None,
                   help="bench a running OpenAI-compatible server instead (no local engine)")
    p.add_argument("--served-model", default=None, help="the model name the --url server serves")
    p.add_argument("--api-key", default=None, help="Bearer key for --url")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--max-concurrency", type=int, default=8)
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second, Poisson arrivals (default inf: all at once)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-lens", default="16,64", help="low,high prompt tokens (uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run_bench_command)
    return p


def _prompt_lens(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--prompt-lens must be 'low,high', got {text!r}") from None
    return lo, hi


def print_results(results, out=sys.stdout) -> None:
    keys = list(results[0].metrics)
    names = [f"{r.target} ({r.via})" for r in results]
    width = max(len(k) for k in keys) + 2
    print("metric".ljust(width) + "".join(n.rjust(22) for n in names), file=out)
    for k in keys:
        cells = "".join(f"{r.metrics[k]:22.2f}" if isinstance(r.metrics[k], float)
                        else f"{r.metrics[k]:>22}" for r in results)
        print(k.ljust(width) + cells, file=out)


def run_bench_command(args: argparse.Namespace, out=None) -> int:
    from workbench.loadgen import run_bench

    out = out or sys.stdout
    kw = dict(num_requests=args.num_requests, request_rate=args.request_rate,
              max_concurrency=args.max_concurrency, max_tokens=args.max_tokens,
              prompt_lens=_prompt_lens(args.prompt_lens), seed=args.seed)
    if args.url:
        if not args.served_model:
            raise ValueError("--url needs --served-model (the name the server serves)")
        results = [run_bench(url=args.url.rstrip("/"), model=args.served_model,
                             api_key=args.api_key, **kw)]
    else:
        from workbench.engines.catalog import engine_class
        from workbench.loading.loader import load_model

        lm = load_model(args.model, progress=False)
        engine = engine_class(args.engine)(lm, max_model_len=args.max_model_len)
        engine.start()
        results = []
        try:
            if args.via in ("direct", "both"):
                results.append(run_bench(engine, name=args.engine, **kw))
            if args.via in ("http", "both"):
                from workbench.server.handle import serve

                with serve({args.engine: engine}, stop_engines=False) as handle:
                    results.append(run_bench(engine, url=handle.url, model=args.engine,
                                             name=args.engine, **kw))
        finally:
            engine.close()
    if args.json:
        print(json.dumps([r.row() | {"warmup_s": r.warmup_s} for r in results], indent=2),
              file=out)
    else:
        print_results(results, out)
    return 0
