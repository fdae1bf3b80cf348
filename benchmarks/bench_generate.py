"""Offline generation speed: vInference and vSurge against transformers `generate`, same run.

Default workload (the embedded SmolLM2-135M-Instruct, float32, CPU): batch sizes 1, 8 and 32 of
varied chat prompts trimmed/padded to exactly 40 tokens, 128 new tokens each, greedy, ignore_eos.
Per batch size and engine: output tokens/s (median of `--runs` runs after a warm-up; the warm-up's
extra time is reported as compile seconds), the ratio against transformers, and the share of a
"weights-only floor" (a jitted function that streams every weight matrix once per token, one array
per layer so nothing is copied: the memory-bandwidth bound of a decode step, with its GB/s), and
beside it the "scan floor" (the same matmuls over stacked weights under `lax.scan`, as the scan
layer loop runs them: the gap is what slicing the weights out of the stack costs). Engines run round-robin inside each round, so load from
other processes hits every engine alike. Then, in a fresh subprocess: seconds from start to the
first token of `load_model("embedded")` + `vInference` (the converted-model cache is warm).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_generate.py            # full (~10 min, 2 cores)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_generate.py --quick    # smoke run (~1-2 min)
    # accelerator: random-weight Llama-3.2-1B shapes, bfloat16, token-id prompts
    PYTHONPATH=. .venv/bin/python benchmarks/bench_generate.py --random-config llama-1b --dtype bfloat16

Threads: XLA's CPU client uses every core it sees (2 on the reference box; there is no portable
runtime knob, `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` makes it single-threaded); transformers
is pinned with `torch.set_num_threads(--threads)` (default 2), so both sides use the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common as C  # noqa: E402

ALL_ENGINES = ("vinference", "vsurge", "vsurge32", "transformers", "transformers-compiled",
               "floor")
DEFAULT_ENGINES = ("vinference", "vsurge", "transformers", "floor")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens per row (default 128)")
    p.add_argument("--prompt-len", type=int, default=40, help="prompt tokens per row (default 40)")
    p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (median)")
    p.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                   help=f"comma-separated subset of {','.join(ALL_ENGINES)}; vsurge32 is vSurge "
                        "with 32 decode slots (a serving configuration) at batch sizes below 32")
    p.add_argument("--random-config", default=None, choices=sorted(C.RANDOM_CONFIGS),
                   help="random-weight model of these shapes instead of the embedded model")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (accelerator default)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for transformers")
    p.add_argument("--no-cold", action="store_true", help="skip the cold load-to-first-token run")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the prefill / decode-step device-time breakdown")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 1,4; 16 tokens; 1 run")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args(argv)
    if a.quick:
        a.batch_sizes, a.max_tokens, a.runs = "1,4", 16, 1
    a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    bad = set(a.engines) - set(ALL_ENGINES)
    if bad:
        p.error(f"unknown engines {sorted(bad)}; choose from {ALL_ENGINES}")
    return a


def cold_first_token(dtype: str | None) -> dict:
    """A fresh interpreter: import, load the embedded model, build vInference, generate 1 token
    (`dtype` None: the benchmark's default for the backend, as `common.run_setup` picks it)."""
    code = f"""
import json, time
t0 = time.perf_counter()
from workbench.loading.loader import load_model
from workbench.engines.vinference import vInference
from workbench.sampling_params import SamplingParams
t_import = time.perf_counter()
import jax
dtype = {dtype!r} or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
lm = load_model("embedded", dtype=dtype, progress=False)
t_load = time.perf_counter()
eng = vInference(lm, max_batch_size=1, max_model_len=256)
ids, _ = eng.chat_prompt([{{"role": "user", "content": "What is the capital of France?"}}])
out = eng.generate([ids], SamplingParams(max_tokens=1, temperature=0.0))
t_first = time.perf_counter()
assert len(out[0].outputs[0].token_ids) == 1
print("COLD " + json.dumps(dict(import_s=t_import - t0, load_s=t_load - t_import,
      first_token_s=t_first - t_load, in_process_s=t_first - t0)))
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("COLD ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cold run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    res = json.loads(line[5:])
    res["wall_s"] = wall  # includes interpreter start-up; the process exit after is not counted
    return res


def main(argv=None):
    args = parse_args(argv)

    # First, before this process imports JAX or torch or loads a model: a cold start is a fresh
    # interpreter on an otherwise idle machine, not one next to a parent holding two models.
    cold = None
    if not args.no_cold and args.random_config is None:
        C.log("cold start: fresh interpreter -> load_model('embedded') -> vInference -> 1 token")
        cold = cold_first_token(args.dtype)

    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge
    from workbench.sampling_params import SamplingParams

    dtype, tdev = C.run_setup(args)
    if tdev is not None:
        import torch

        torch.set_num_threads(args.threads)
    C.print_environment({"dtype": dtype, "model": args.random_config or "embedded SmolLM2-135M"})

    lm = C.load_lm(args.random_config, dtype)
    C.log(f"model loaded in {lm.load_seconds:.1f}s: {lm.num_params / 1e6:.1f}M params, "
          f"{C.weights_bytes(lm) / 1e6:.0f} MB of weights")
    P, N, maxB = args.prompt_len, args.max_tokens, max(args.batch_sizes)
    wbytes = C.weights_bytes(lm)
    if lm.tokenizer is not None:
        prompts = C.chat_prompts(lm.tokenizer, maxB, P)
        pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    else:
        prompts = C.random_token_prompts(maxB, P, lm.config.vocab_size)
        pad_id = 0
    sp = SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True)
    model_len = C.round_up(P + N, 128)

    engines: dict = {}
    if "vinference" in args.engines:
        engines["vinference"] = vInference(lm, max_batch_size=maxB, max_model_len=model_len)
    hf = None
    if tdev is not None:
        t0 = time.perf_counter()
        hf = C.load_hf_model(lm, dtype, tdev, args.threads)
        C.log(f"transformers model loaded in {time.perf_counter() - t0:.1f}s on {tdev}")
    hfc = None  # transformers with a static cache and torch.compile (the accelerator peer)
    if tdev is not None and "transformers-compiled" in args.engines:
        import torch

        hfc = C.load_hf_model(lm, dtype, tdev, args.threads)
        hfc.forward = torch.compile(hfc.forward, mode="reduce-overhead", fullgraph=True)
    vs32 = None
    if "vsurge32" in args.engines and any(b < 32 for b in args.batch_sizes):
        vs32 = vSurge(lm, max_concurrent_decodes=max(32, maxB), max_model_len=model_len).start()

    results = []  # dicts: engine, batch, tok_s, compile_s, times
    outputs = {}  # (engine, B) -> list of token-id lists
    floors, scan_floors = {}, {}  # per-layer arrays (the floor) / the scan's stacked ones
    breakdown = {}
    for B in args.batch_sizes:
        batch = prompts[:B]
        runners = {}
        if "vinference" in engines:
            runners["vinference"] = lambda b=batch: engines["vinference"].generate(b, sp)
        vs = None
        if "vsurge" in args.engines:
            vs = vSurge(lm, max_concurrent_decodes=B, max_model_len=model_len).start()
            runners["vsurge"] = lambda b=batch, e=vs: e.generate(b, sp)
        if vs32 is not None and B < vs32.max_concurrent_decodes:
            runners["vsurge32"] = lambda b=batch: vs32.generate(b, sp)
        if hf is not None and "transformers" in args.engines:
            runners["transformers"] = lambda b=batch: C.hf_generate(hf, b, N, pad_id)
        if hfc is not None:
            runners["transformers-compiled"] = lambda b=batch: C.hf_generate(
                hfc, b, N, pad_id, static_cache=True)

        warm, programs = {}, {}
        for name, fn in runners.items():
            C.log(f"B={B}: warm-up {name}")
            if name == "transformers":  # eager: nothing to compile; a short warm-up
                warm[name], _ = C.timed(lambda: C.hf_generate(hf, batch, min(N, 8), pad_id))
            else:
                with C.CompileProbe() as probe:
                    warm[name], _ = C.timed(fn)
                programs[name] = probe.count
                C.log(f"  {warm[name]:.1f}s, of which XLA backend compile {probe.seconds:.1f}s "
                      f"({probe.count} programs)")
        times = {name: [] for name in runners}
        for r in range(args.runs):
            for name, fn in runners.items():  # round-robin: load changes hit all engines
                with C.gc_paused(), C.CompileProbe() as probe:
                    dt, out = C.timed(fn)
                if probe.seconds > 0:
                    C.log(f"  warning: {name} compiled for {probe.seconds:.2f}s inside a timed run")
                times[name].append(dt)
                C.log(f"B={B} run {r + 1}/{args.runs} {name}: {dt:.2f}s = {B * N / dt:.1f} tok/s")
                if r == 0:
                    outputs[(name, B)] = (
                        [o.tolist() for o in out] if name.startswith("transformers")
                        else [o.outputs[0].token_ids for o in out])
        for name in runners:
            med = C.median(times[name])
            n_tok = sum(len(t) for t in outputs[(name, B)])
            if n_tok != B * N:
                C.log(f"  warning: {name} produced {n_tok} tokens, expected {B * N}")
            compile_s = None if name == "transformers" else max(0.0, warm[name] - med)
            results.append(dict(engine=name, batch=B, tok_s=B * N / med, compile_s=compile_s,
                                times=times[name], warmup_s=warm[name],
                                programs=programs.get(name)))
        if vs is not None:
            vs.close()
        if "floor" in args.engines:
            steps = min(N, 32)
            floors[B], m = C.measure_floor(lm, B, steps, args.runs)
            scan_floors[B], ms = C.measure_floor(lm, B, steps, args.runs, layer_loop="scan")
            for label, tps, mm in (("weights-only floor", floors[B], m),
                                   ("scan floor", scan_floors[B], ms)):
                step_s = mm.median_s / steps
                C.log(f"B={B}: {label} {tps:.1f} tok/s ({step_s * 1e3:.1f} ms per step, "
                      f"{wbytes / step_s / 1e9:.1f} GB/s of weights)")
        if not args.no_breakdown:
            breakdown[B] = C.step_breakdown(lm, B, P, model_len, runs=args.runs + 2)
            bd = breakdown[B]
            C.log(f"B={B}: prefill {bd.prefill_s * 1e3:.0f} ms, decode step "
                  f"{bd.decode_chunk_step_s * 1e3:.1f} ms (16-step loop) / "
                  f"{bd.decode_single_step_s * 1e3:.1f} ms (1-step call)")
    if vs32 is not None:
        vs32.close()

    # ---- tables ----
    by = {(r["engine"], r["batch"]): r for r in results}
    rows = []
    for B in args.batch_sizes:
        base = by.get(("transformers", B))
        for name in [e for e in ALL_ENGINES if (e, B) in by]:
            r = by[(name, B)]
            rows.append([
                name, B, r["tok_s"],
                f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-",
                f"{100 * r['tok_s'] / floors[B]:.0f}%" if B in floors else "-",
                C.fmt(r["compile_s"]),
                " ".join(f"{B * N / t:.1f}" for t in r["times"]),
            ])
        if B in floors:
            gbs = wbytes * floors[B] / B / 1e9  # weights streamed once per step
            rows.append(["weights-only floor", B, floors[B], "-", "100%", "-",
                         f"{gbs:.1f} GB/s"])
            rows.append(["scan floor", B, scan_floors[B], "-",
                         f"{100 * scan_floors[B] / floors[B]:.0f}%", "-",
                         f"{wbytes * scan_floors[B] / B / 1e9:.1f} GB/s"])
    C.print_table(["engine", "batch", "tok/s", "vs transformers", "% of floor", "compile s",
                   "tok/s per run"], rows,
                  title=f"generate: {P}-token prompts, {N} new tokens, greedy, ignore_eos "
                        f"(median of {args.runs})")

    if breakdown:
        rows = []
        for B, bd in breakdown.items():
            vi = by.get(("vinference", B))
            per_tok = (B / vi["tok_s"]) if vi else None  # seconds per decode step, end to end
            fl = (B / floors[B]) if B in floors else None
            rows.append([B, bd.prefill_s * 1e3, bd.decode_chunk_step_s * 1e3,
                         bd.decode_single_step_s * 1e3,
                         per_tok * 1e3 if per_tok else None, fl * 1e3 if fl else None])
        C.print_table(["batch", "prefill ms", "decode step ms (16-step loop)",
                       "decode step ms (1-step call)", "vInference ms/step end-to-end",
                       "floor ms/step"], rows,
                      title="device-time breakdown (the engines' jitted functions, no host code)")

    # token agreement (greedy): engines must agree with each other; transformers up to float noise
    rows = []
    for B in args.batch_sizes:
        ref = outputs.get(("vinference", B))
        for name in ("vsurge", "vsurge32", "transformers"):
            if name == "transformers" and not lm.path:
                continue  # a random-weight torch peer has different weights: tokens differ
            other = outputs.get((name, B))
            if ref is None or other is None:
                continue
            same = sum(a == b for a, b in zip(ref, other))
            prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
                      for a, b in zip(ref, other)]
            rows.append([f"vinference vs {name}", B, f"{same}/{len(ref)}",
                         C.median(prefix), min(prefix)])
    if rows:
        C.print_table(["pair", "batch", "identical rows", "median common prefix",
                       "min common prefix"], rows, title="greedy token agreement")

    if cold is not None:
        C.print_table(["import s", "load_model s", "build + first token s", "in-process s",
                       "wall s (incl. interpreter start)", "target"],
                      [[cold["import_s"], cold["load_s"], cold["first_token_s"],
                        cold["in_process_s"], cold["wall_s"],
                        "< 20 s: " + ("met" if cold["wall_s"] < 20 else "MISSED")]],
                      title="cold load-to-first-token, measured first (converted-model cache "
                            "warm; no persistent XLA compile cache)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=C.environment(), args=vars(args), results=results,
                           floors=floors, scan_floors=scan_floors, weights_bytes=wbytes,
                           cold=cold,
                           breakdown={B: vars(b) for B, b in breakdown.items()}), f, indent=1)


if __name__ == "__main__":
    main()
