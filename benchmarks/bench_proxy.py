"""Proxy overhead: the same streaming workload straight to a `workbench serve` upstream ("direct")
and through `workbench proxy` in front of it ("proxy"), in the same run.

The load generator is the library's (`workbench.loadgen`: `drive`, `http_client`, `summarize`:
token-id prompts cut from real text, 16..64 tokens, greedy, ignore_eos, SSE over httpx, TTFT =
first token-bearing
chunk). Measurements, the targets of issue 15 first:
- TTFT at concurrency 1, paired: `--ttft-requests` (48) prompts of `--ttft-max-tokens` (4) tokens,
  each sent direct and through the proxy back to back (which goes first alternates); headline: the
  median of the per-prompt differences (target <= 2 ms). Pairing cancels the drift of a shared
  machine, which moves TTFT by tens of ms between runs.
- output tok/s at concurrency 16: `--num-requests` (64) requests of `--max-tokens` (64) tokens, a
  direct run and a proxy run per repeat (`--repeats`, 3; order alternating); headline: the median
  of the per-repeat ratios proxy / direct (target >= 0.95).
- the proxy hop alone: the same two measurements against a null upstream (this script with
  `--serve-null`: an OpenAI-shaped server that streams `max_tokens` chunks at once, no model), so
  the engine's time and noise are out of the picture: TTFT difference, and how many chunks per
  second direct and proxy paths carry at concurrency 16.
- the CPU time the proxy process spends per request and per relayed chunk (from /proc): what it
  takes from the upstream when both share the machine.

Processes: the upstream (`workbench serve --engine vsurge`), the proxy (`workbench proxy
--config`, that upstream as its one backend) and this client are separate processes, as in a
deployment; `--proxy-in-process` runs the proxies in a thread of this process instead (as in a
notebook). Before the measured runs both paths run the whole workload once (compiling every
shape the upstream needs; printed apart).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_proxy.py --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
from fastapi import FastAPI, Request  # the null upstream (module level: FastAPI reads annotations)
from fastapi.responses import JSONResponse, StreamingResponse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common as C  # noqa: E402, N812
from workbench.loadgen import PROMPT_LENS, drive, summarize  # noqa: E402
from workbench.loadgen import http_client as server_request  # noqa: E402
from workbench.loading.sources import resolve_source  # noqa: E402
from workbench.tokenizer import load_tokenizer  # noqa: E402

MODEL_NAME = "bench"


class Child:
    """`python -m workbench.cli ARGS` (or `python ARGS` with `module=None`) with its output in a
    file; `.url` once it is serving."""

    def __init__(self, args: list[str], log_path: str, timeout: float = 600.0,
                 module: str | None = "workbench.cli"):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=ROOT)
        argv = [sys.executable, *(["-m", module] if module else []), *args]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            text = open(log_path).read()
            m = re.search(r"(http://127\.0\.0\.1:\d+)", text)
            if m and "Ctrl-C" in text:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start:\n{text}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def prompts_for(model: str | None, n: int, seed: int) -> list[list[int]]:
    tokenizer = load_tokenizer(resolve_source(model)[0]) if model else None
    lens = np.random.default_rng(seed).integers(PROMPT_LENS[0], PROMPT_LENS[1] + 1, n).tolist()
    return C.text_token_prompts(tokenizer, lens, seed=seed, vocab_size=1000)


def _client(url: str, concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 8,
                          max_keepalive_connections=concurrency + 8)
    return httpx.AsyncClient(base_url=url, timeout=600, limits=limits)


async def throughput(url: str, prompts: list[list[int]], max_tokens: int, concurrency: int,
                     seed: int) -> tuple[dict[str, float], int]:
    """bench_serving's workload against `url`: (its summary, the token-bearing chunks received)."""
    async with _client(url, concurrency) as client:
        one = server_request(client, MODEL_NAME, max_tokens)
        results, duration = await drive(prompts, one, float("inf"), concurrency, seed)
    return summarize(results, duration), sum(len(r.itl) + 1 for r in results)


async def paired_ttft(urls: dict[str, str], prompts: list[list[int]], max_tokens: int
                      ) -> dict[str, list[float]]:
    """Concurrency 1: each prompt direct and through the proxy back to back (the first of the two
    alternates); TTFT in ms per path, in prompt order."""
    out: dict[str, list[float]] = {path: [] for path in urls}
    async with _client(urls["direct"], 1) as d, _client(urls["proxy"], 1) as p:
        ones = {"direct": server_request(d, MODEL_NAME, max_tokens),
                "proxy": server_request(p, MODEL_NAME, max_tokens)}
        for i, prompt in enumerate(prompts):
            for path in (("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")):
                out[path].append(1e3 * (await ones[path](prompt)).ttft)
    return out


def ttft_table(title: str, ttft: dict[str, list[float]]) -> float:
    diffs = [p - d for d, p in zip(ttft["direct"], ttft["proxy"], strict=True)]
    q = lambda xs, p: C.percentile(xs, p)  # noqa: E731
    rows = [(path, f"{q(v, 50):.2f}", f"{q(v, 25):.2f}", f"{q(v, 75):.2f}")
            for path, v in ttft.items()]
    rows.append(("proxy - direct, per pair", f"{q(diffs, 50):+.2f}", f"{q(diffs, 25):+.2f}",
                 f"{q(diffs, 75):+.2f}"))
    C.print_table(("TTFT (ms)", "p50", "p25", "p75"), rows, title=title)
    return q(diffs, 50)


def tput_table(title: str, key: str, rows: list[tuple[float, float]]) -> float:
    table = [(f"repeat {i + 1}", f"{d:.1f}", f"{p:.1f}", f"{p / d:.3f}")
             for i, (d, p) in enumerate(rows)]
    ratio = statistics.median(p / d for d, p in rows)
    table.append(("median", f"{statistics.median(d for d, _ in rows):.1f}",
                  f"{statistics.median(p for _, p in rows):.1f}", f"{ratio:.3f}"))
    C.print_table(("run", f"direct {key}", f"proxy {key}", "proxy / direct"), table, title=title)
    return ratio


class Stack:
    """An upstream and a proxy in front of it (processes, or the proxy in a thread)."""

    def __init__(self, name: str, upstream_args: list[str], module: str | None, tmp: str,
                 in_process: bool):
        self.upstream = Child(upstream_args, os.path.join(tmp, f"{name}-upstream.log"),
                              module=module)
        config = os.path.join(tmp, f"{name}-routes.json")
        with open(config, "w") as f:
            json.dump({"routes": {MODEL_NAME: [{"url": self.upstream.url + "/v1"}]}}, f)
        self.proxy, self.handle = None, None
        try:
            if in_process:
                from workbench.server import serve_proxy
                from workbench.server.proxy.config import load_config

                self.handle = serve_proxy(load_config(config))
                proxy_url = self.handle.url
            else:
                self.proxy = Child(["proxy", "--config", config, "--port", "0"],
                                   os.path.join(tmp, f"{name}-proxy.log"))
                proxy_url = self.proxy.url
        except BaseException:
            self.upstream.stop()
            raise
        self.urls = {"direct": self.upstream.url, "proxy": proxy_url}

    def proxy_cpu(self) -> float | None:
        return self.proxy.cpu_seconds() if self.proxy is not None else None

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.upstream.stop()


async def measure(stack: Stack, args: argparse.Namespace, ttft_prompts, tput_prompts,
                  label: str) -> dict[str, float]:
    """Paired TTFT at c=1, then throughput at c=16 per repeat; prints both tables, and the
    proxy's CPU time split into a cost per request and a cost per relayed chunk (a least-squares
    fit over the two phases: few chunks per request in the first, many in the second)."""
    c0, u0 = stack.proxy_cpu(), stack.upstream.cpu_seconds()
    ttft = await paired_ttft(stack.urls, ttft_prompts, args.ttft_max_tokens)
    c1, u1 = stack.proxy_cpu(), stack.upstream.cpu_seconds()
    rows, chunks, proxy_seconds = [], 0, 0.0
    for r in range(args.repeats):
        values = {}
        for path in (("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")):
            summary, n = await throughput(stack.urls[path], tput_prompts, args.max_tokens, 16,
                                          args.seed)
            values[path] = summary["output tok/s"]
            if path == "proxy":
                chunks += n
                proxy_seconds += len(tput_prompts) * args.max_tokens / summary["output tok/s"]
        rows.append((values["direct"], values["proxy"]))
        C.log(f"{label} repeat {r + 1}: direct {values['direct']:.1f}, proxy "
              f"{values['proxy']:.1f} tok/s")
    c2, u2 = stack.proxy_cpu(), stack.upstream.cpu_seconds()
    out = {"ttft": ttft_table(f"{label}: TTFT at concurrency 1, {len(ttft_prompts)} pairs x "
                              f"{args.ttft_max_tokens} tokens", ttft),
           "ratio": tput_table(f"{label}: output tok/s at concurrency 16, {len(tput_prompts)} "
                               f"requests x {args.max_tokens} tokens", "tok/s", rows)}
    if c0 is not None:
        phases = np.array([[len(ttft_prompts), len(ttft_prompts) * args.ttft_max_tokens],
                           [args.repeats * len(tput_prompts), chunks]], dtype=float)
        per_request, per_chunk = np.linalg.solve(phases, np.array([c1 - c0, c2 - c1]))
        out["cpu_ms_per_request"], out["cpu_us_per_chunk"] = 1e3 * per_request, 1e6 * per_chunk
        print(f"\n{label}: proxy process CPU {c1 - c0:.2f} s for {len(ttft_prompts)} requests at "
              f"concurrency 1, {c2 - c1:.2f} s for {args.repeats * len(tput_prompts)} requests "
              f"and {chunks} chunks at 16: {1e3 * per_request:.2f} ms per request + "
              f"{1e6 * per_chunk:.0f} us per relayed chunk; during the proxy runs at 16 it used "
              f"{100 * (c2 - c1) / proxy_seconds:.1f}% of one core")
        # the upstream served both paths: twice the proxy's requests and chunks
        up_request, up_chunk = np.linalg.solve(2 * phases, np.array([u1 - u0, u2 - u1]))
        print(f"{label}: upstream process CPU, the same fit: {1e3 * up_request:.2f} ms per "
              f"request + {1e6 * up_chunk:.0f} us per chunk" + (
                  " (a bare FastAPI streaming endpoint: the cost of one HTTP server hop)"
                  if "null" in label else " (engine work included)"))
    return out


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="bench_proxy-")
    C.log(f"logs in {tmp}")
    results = {}
    stacks: list[Stack] = []
    try:
        null = Stack("null", [os.path.abspath(__file__), "--serve-null"], None, tmp,
                     args.proxy_in_process)
        stacks.append(null)
        prompts = prompts_for(None, max(args.num_requests, args.null_ttft_requests), args.seed)
        for path in ("direct", "proxy"):  # warm connections and code paths
            await throughput(null.urls[path], prompts[:32], args.max_tokens, 16, args.seed)
        results["null"] = await measure(null, args, prompts[:args.null_ttft_requests],
                                        prompts[:args.num_requests],
                                        "null upstream (the proxy hop alone)")
        null.stop()
        stacks.remove(null)
        if args.null_only:
            return

        C.log(f"starting workbench serve --engine {args.engine} ({args.model})")
        real = Stack("engine", ["serve", "--model", args.model, "--engine", args.engine,
                                "--max-model-len", str(args.max_model_len),
                                "--served-model-name", MODEL_NAME, "--port", "0"],
                     "workbench.cli", tmp, args.proxy_in_process)
        stacks.append(real)
        ttft_prompts = prompts_for(args.model, args.ttft_requests, args.seed)
        tput_prompts = prompts_for(args.model, args.num_requests, args.seed + 1)
        t0 = time.perf_counter()
        for url in real.urls.values():  # compiles every shape the workloads need
            await throughput(url, tput_prompts, args.max_tokens, 16, args.seed)
            await throughput(url, ttft_prompts, args.ttft_max_tokens, 1, args.seed)
        C.log(f"warm-up (compile) {time.perf_counter() - t0:.1f} s")
        results["engine"] = await measure(real, args, ttft_prompts, tput_prompts,
                                          f"workbench serve --engine {args.engine}")
    finally:
        for stack in stacks:
            stack.stop()

    where = "a thread of the client" if args.proxy_in_process else "its own process"
    e = results["engine"]
    print(f"\nproxy in {where}; upstream: workbench serve --engine {args.engine} ({args.model}, "
          f"max_model_len {args.max_model_len}); prompts {PROMPT_LENS[0]}..{PROMPT_LENS[1]} "
          f"tokens")
    print(f"TTFT p50 overhead of the proxy: {e['ttft']:+.2f} ms (target <= 2 ms: "
          f"{'met' if e['ttft'] <= 2 else 'missed'}); output tok/s proxy/direct: "
          f"{e['ratio']:.3f} (target >= 0.95: {'met' if e['ratio'] >= 0.95 else 'missed'}); "
          f"the proxy hop alone: {results['null']['ttft']:+.2f} ms TTFT, chunks/s ratio "
          f"{results['null']['ratio']:.3f}")


# ---- the null upstream ------------------------------------------------------------------------
def serve_null() -> None:
    """An OpenAI-shaped /v1/completions that streams `max_tokens` one-token chunks at once (and a
    usage chunk when asked): the upstream with no engine, for measuring the proxy alone."""
    from workbench.server import serve
    from workbench.server.streaming import SSE_DONE, sse

    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        chunk = {"id": "cmpl-null", "object": "text_completion", "created": 0, "model": MODEL_NAME}

        async def events():
            for i in range(n):
                yield sse({**chunk, "choices": [{"index": 0, "text": f" t{i}", "logprobs": None,
                                                 "finish_reason": "length" if i == n - 1
                                                 else None}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield sse({**chunk, "choices": [], "usage": {"prompt_tokens": 1,
                                                             "completion_tokens": n,
                                                             "total_tokens": n + 1}})
            yield SSE_DONE

        if not body.get("stream"):
            return JSONResponse({**chunk, "choices": [{"index": 0, "text": "x"}]})
        return StreamingResponse(events(), media_type="text/event-stream")

    handle = serve(app)
    print(f"null upstream at {handle.url}; Ctrl-C to stop", flush=True)
    try:
        while handle.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--engine", choices=("vinference", "vsurge"), default="vsurge")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--ttft-requests", type=int, default=48)
    p.add_argument("--null-ttft-requests", type=int, default=400)
    p.add_argument("--ttft-max-tokens", type=int, default=4)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proxy-in-process", action="store_true",
                   help="run the proxy in a thread of this process, not its own process")
    p.add_argument("--null-only", action="store_true",
                   help="measure the proxy hop against the null upstream only (seconds, no model)")
    p.add_argument("--serve-null", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_null:
        serve_null()
        return
    C.print_environment({"engine": args.engine})
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
