"""bench_throughput's eSurge scenarios, each measuring eSurge against vSurge (and vInference where it
applies) in the same process. Called from `bench_throughput.py --scenarios ...`.

- shared-prefix: 64 requests, one 384-token system prompt plus a 16-64-token question each, 64
  new tokens, all at t=0: prompt tokens each engine computes, TTFT p50, output tok/s.
- interference: 8 streams decoding when a 2,000-token prompt arrives: the streams' ITL p50, p99
  and longest gap (the stall) while it prefills; eSurge at its default token budget and at a
  small one, vSurge plain and interleaved.
- memory: KV bytes reserved per engine at the same max_model_len, and eSurge's pages in use at
  the burst's peak.
- compile: step shapes compiled by `precompile()` and its cold / warm (persistent compilation
  cache) wall time, each in a fresh process with a fresh cache directory.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import common as C


def _records_summary(recs, out_lens):
    from benchmarks.bench_throughput import summarize

    return summarize(recs, out_lens)


# ---- shared prefix --------------------------------------------------------------------------
def shared_prefix(lm, engines: dict, seed: int = 0, n: int = 64, system_len: int = 384,
                  question: tuple[int, int] = (16, 64), new_tokens: int = 64) -> dict:
    from benchmarks.bench_throughput import Workload, run_vsurge
    from workbench.sampling_params import SamplingParams

    rng = np.random.default_rng(seed + 7)
    system = C.text_token_prompts(lm.tokenizer, [system_len], seed + 11, lm.config.vocab_size)[0]
    qlens = rng.integers(question[0], question[1] + 1, n).tolist()
    questions = C.text_token_prompts(lm.tokenizer, qlens, seed + 13, lm.config.vocab_size)
    prompts = [system + q for q in questions]
    params = [SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)] * n
    w = Workload(prompts, [new_tokens] * n, [0.0] * n)
    out = {}
    for name, eng in engines.items():
        for attempt in ("warm-up", "measured"):  # the warm-up compiles the long prompts' shapes
            if hasattr(eng, "reset_prefix_cache"):
                eng.reset_prefix_cache()  # start cold: the first request computes the prefix
            before = eng.metrics()
            C.log(f"shared-prefix: {name} ({attempt}) ...")
            with C.gc_paused(), C.CompileProbe() as probe:
                recs = run_vsurge(eng, w, params)
            after = eng.metrics()
        s = _records_summary(recs, w.out_lens)
        prompt_tokens = sum(map(len, prompts))
        if hasattr(eng, "reset_prefix_cache"):
            hits = after["prefix_cache_hits_total"] - before["prefix_cache_hits_total"]
            s["prompt_tokens_computed"] = prompt_tokens - hits
        else:  # vSurge computes every prompt token (and pads each prompt to its bucket)
            s["prompt_tokens_computed"] = prompt_tokens
            s["prompt_tokens_padded"] = sum(min(b for b in eng.prefill_buckets if b >= len(p))
                                            for p in prompts)
        s["compile_in_run_s"] = probe.seconds
        out[name] = s
        C.log(f"shared-prefix: {name}: {s}")
    return out


# ---- long-prompt interference ------------------------------------------------------------------
def interference(lm, engines: dict, seed: int = 0, streams: int = 8, stream_prompt: int = 64,
                 stream_tokens: int = 160, long_prompt: int = 2000) -> dict:
    """Each engine: `streams` requests start; once every stream has 8 tokens, a `long_prompt`
    prompt arrives. Per engine: the streams' inter-token gaps (each delivery gap divided over
    the tokens it brought) while the long prompt was waiting for its first token, and overall."""
    from workbench.sampling_params import SamplingParams

    prompts = C.text_token_prompts(lm.tokenizer, [stream_prompt] * streams + [long_prompt],
                                   seed + 17, lm.config.vocab_size)
    sp = SamplingParams(max_tokens=stream_tokens, temperature=0.0, ignore_eos=True)
    sp_long = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    out = {}
    for name, eng in engines.items():
        for attempt in ("warm-up", "measured"):
            if hasattr(eng, "reset_prefix_cache"):
                eng.reset_prefix_cache()  # else the measured run reuses the warm-up's prompts
            times: list[list[tuple[float, int]]] = [[] for _ in range(streams)]
            subs = [eng.submit(p, sp) for p in prompts[:streams]]

            def consume(i, s, times=times):
                while True:
                    o = s.get()
                    if o.outputs[0].delta_token_ids:
                        times[i].append((time.perf_counter(), len(o.outputs[0].delta_token_ids)))
                    if o.finished:
                        return

            threads = [threading.Thread(target=consume, args=(i, s)) for i, s in enumerate(subs)]
            for t in threads:
                t.start()
            while min(sum(n for _, n in ts) for ts in times) < 8:
                time.sleep(0.005)
            t_arrive = time.perf_counter()
            long_stream = eng.submit(prompts[-1], sp_long)
            first = long_stream.get()
            t_first = time.perf_counter()
            while not first.finished:
                first = long_stream.get()
            for t in threads:
                t.join()
        gaps, window = [], []
        for ts in times:
            for (a, _), (b, k) in itertools.pairwise(ts):
                gaps += [(b - a) / k] * k
                if a < t_first and b > t_arrive:
                    window.append(b - a)
        res = dict(itl_p50_ms=1e3 * C.percentile(gaps, 50), itl_p99_ms=1e3 * C.percentile(gaps, 99),
                   stall_ms=1e3 * max(window, default=0.0), long_ttft_s=t_first - t_arrive,
                   gaps_in_window=len(window))
        res["p99_over_p50"] = res["itl_p99_ms"] / res["itl_p50_ms"]
        out[name] = res
        C.log(f"interference: {name}: {res}")
    return out


# ---- memory ---------------------------------------------------------------------------------------
class PagePeak:
    """Samples an eSurge's pages in use in a thread (max over the run)."""

    def __init__(self, eng, period: float = 0.02):
        self.eng, self.period, self.peak = eng, period, 0
        self._stop = threading.Event()

    def __enter__(self):
        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.eng.metrics()["kv_pages"]["used"])
                time.sleep(self.period)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def kv_bytes(engines: dict, model_len: int, burst_batch: int, page_peak: int | None) -> dict:
    """KV bytes each engine reserves at the same max_model_len (and eSurge's in use at peak)."""
    out = {}
    for name, eng in engines.items():
        cfg = eng.model.config
        per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
                     * np.dtype(eng.model.dtype).itemsize)
        if name.startswith("vsurge"):
            out[name] = dict(reserved=eng.max_concurrent_decodes * eng.max_model_len * per_token)
        elif name == "vinference":  # a batch's cache, allocated per batch (the burst's largest)
            S = C.vinference_cache_len(eng, model_len)
            out[name] = dict(reserved=burst_batch * S * per_token)
        elif name == "esurge":
            page = eng.page_size * per_token
            out[name] = dict(reserved=eng.num_pages * page,
                             in_use_peak=None if page_peak is None else page_peak * page)
    return out


# ---- compile: cold and warm start -------------------------------------------------------------
_COMPILE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from benchmarks import common as C
from workbench.engines.{module} import {cls}
lm = C.load_lm({random_config!r}, {dtype!r})
t1 = time.perf_counter()
eng = {cls}(lm, **{kwargs!r})
info = eng.precompile(**{pc_kwargs!r})
t2 = time.perf_counter()
shapes = len(info["shapes"]) if "shapes" in info else info["prefill"] + info["decode"]
print(json.dumps(dict(shapes=shapes, precompile_s=t2 - t1, load_s=t1 - t0)))
eng.close()
"""

COMPILE_ENGINES = {
    # vInference compiles lazily: its precompile() covers every batch bucket for one prompt
    # bucket (40-token prompts, 64 new tokens: bench_generate's shapes)
    "vinference": ("vinference", "vInference", dict(max_batch_size=32),
                   dict(prompt_lens=(40,), max_tokens=64)),
    "vsurge": ("vsurge", "vSurge", dict(max_concurrent_decodes=32), dict(max_prompt_len=256)),
    "esurge": ("esurge", "eSurge", dict(max_num_seqs=32), {}),
}


def compile_start(model_len: int, random_config: str | None, dtype: str,
                  engines=None) -> dict:
    """Per engine: shapes `precompile()` compiles, its seconds in a fresh process with an empty
    persistent cache (cold) and again with the cache the first run filled (warm)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for name, (module, cls, kwargs, pc_kwargs) in COMPILE_ENGINES.items():
        if engines is not None and name not in engines:
            continue
        kwargs = dict(kwargs, max_model_len=model_len)
        script = _COMPILE_SCRIPT.format(root=root, module=module, cls=cls, kwargs=kwargs,
                                        pc_kwargs=pc_kwargs, random_config=random_config,
                                        dtype=dtype)
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, WORKBENCH_COMPILATION_CACHE=cache, PYTHONPATH=root)
            runs = []
            for attempt in ("cold", "warm"):
                C.log(f"compile: {name} {attempt} ...")
                r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=False,
                                   text=True, timeout=3600)
                if r.returncode:
                    raise RuntimeError(r.stderr[-3000:])
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        out[name] = dict(shapes=runs[0]["shapes"], cold_s=runs[0]["precompile_s"],
                         warm_s=runs[1]["precompile_s"])
        C.log(f"compile: {name}: {out[name]}")
    return out


# ---- the driver ---------------------------------------------------------------------------------
def run(args, lm, engines, model_len, page_peak, dtype) -> dict:
    """The scenarios `args.scenarios` names, on the burst's engines where they fit; prints a
    table each, returns their results."""
    from workbench.engines.esurge import eSurge
    from workbench.engines.vsurge import vSurge

    out = {}
    if "memory" in args.scenarios and engines:
        mem = kv_bytes(engines, model_len, args.slots, page_peak)
        out["memory"] = mem
        C.print_table(["engine", "KV reserved MB", "KV in use at peak MB"],
                      [[n, m["reserved"] / 2**20, C.fmt(m.get("in_use_peak") and
                                                        m["in_use_peak"] / 2**20)]
                       for n, m in mem.items()],
                      title=f"KV memory at max_model_len {model_len} ({args.slots} sequences; "
                            "vinference: its largest burst batch)")
    quick = getattr(args, "quick", False)
    question, new_tokens = ((16, 32), 16) if quick else ((16, 64), 64)
    if "shared-prefix" in args.scenarios:
        need = args.system_len + question[1] + new_tokens  # the longest request
        pair = {n: engines[n] for n in ("vsurge", "esurge")
                if n in engines and engines[n].max_model_len >= need}
        own = {}
        if "vsurge" not in pair:
            own["vsurge"] = vSurge(lm, max_concurrent_decodes=args.slots, max_model_len=need)
        if "esurge" not in pair:
            own["esurge"] = eSurge(lm, max_num_seqs=args.slots, max_model_len=need)
        try:
            res = shared_prefix(lm, {"vsurge": own.get("vsurge") or pair["vsurge"],
                                       "esurge": own.get("esurge") or pair["esurge"]}, args.seed,
                                n=args.prefix_requests, system_len=args.system_len,
                                question=question, new_tokens=new_tokens)
        finally:
            for e in own.values():
                e.close()
        out["shared_prefix"] = res
        vs, es = res["vsurge"], res["esurge"]
        C.print_table(["engine", "prompt tokens computed", "out tok/s", "TTFT p50 s",
                       "TTFT p99 s", "ITL p50 ms"],
                      [[n, r["prompt_tokens_computed"], r["tok_s"], r["ttft_p50"], r["ttft_p99"],
                        r["itl_p50"] * 1e3] for n, r in res.items()],
                      title=f"shared prefix: {args.prefix_requests} requests, {args.system_len}-token"
                            f" system prompt + {question[0]}..{question[1]}-token question, "
                            f"{new_tokens} new tokens, all at t=0")
        print(f"esurge computes {100 * es['prompt_tokens_computed'] / vs['prompt_tokens_computed']:.1f}%"
              f" of vsurge's prompt tokens (target <= 15%); TTFT p50 "
              f"{vs['ttft_p50'] / es['ttft_p50']:.2f}x better (target >= 3x); out tok/s "
              f"{es['tok_s'] / vs['tok_s']:.2f}x (target >= 1.5x)\n")
    if "interference" in args.scenarios:
        stream_tokens = 32 if quick else args.stream_tokens
        long_len = C.round_up(args.long_prompt + 8, 128) + 128
        makers = {
            "esurge": lambda: eSurge(lm, max_model_len=long_len, max_num_seqs=16),
            f"esurge-budget{args.small_budget}": lambda: eSurge(
                lm, max_model_len=long_len, max_num_seqs=16,
                max_num_batched_tokens=args.small_budget),
            "vsurge": lambda: vSurge(lm, max_concurrent_decodes=16, max_model_len=long_len),
            "vsurge-interleaved": lambda: vSurge(lm, max_concurrent_decodes=16,
                                                 max_model_len=long_len, interleaved_mode=True),
        }
        res = {}
        for name, make in makers.items():  # one at a time: each holds its own KV memory
            eng = make().start()
            if name.startswith("esurge"):
                # every token bucket: which buckets a step lands in depends on timing, and a
                # compile inside the measured window reads as a multi-second stall
                eng.precompile()
            try:
                res.update(interference(lm, {name: eng}, args.seed, stream_tokens=stream_tokens,
                                        long_prompt=args.long_prompt))
            finally:
                eng.close()
        out["interference"] = res
        C.print_table(["engine", "streams' ITL p50 ms", "ITL p99 ms", "p99 / p50",
                       "longest gap ms", "long prompt TTFT s"],
                      [[n, r["itl_p50_ms"], r["itl_p99_ms"], f"{r['p99_over_p50']:.2f}",
                        r["stall_ms"], r["long_ttft_s"]] for n, r in res.items()],
                      title=f"long-prompt interference: 8 streams decoding (64-token prompts, "
                            f"{stream_tokens} tokens), a {args.long_prompt}-token prompt arrives "
                            "(target: esurge p99 <= 3x p50)")
    if "compile" in args.scenarios:
        res = compile_start(model_len, args.random_config, dtype, engines=args.engines)
        out["compile"] = res
        C.print_table(["engine", "shapes precompile() compiles", "cold s", "warm s (cache)"],
                      [[n, r["shapes"], r["cold_s"], r["warm_s"]] for n, r in res.items()],
                      title=f"compile at max_model_len {model_len}: fresh process, empty "
                            "persistent cache (cold), then the same cache (warm)")
    return out
