"""The two layer loops (workbench/models/layer_loop.py) against each other, same process.

Part 1, speed: the model in both layouts (same weights), vInference at each batch size (40-token
prompts, `--max-tokens` new, greedy, ignore_eos); the two loops alternate run by run so load from
other processes hits both alike; plus the weights-only floor both ways (per-layer arrays, and the
scan's stacked arrays). Part 2, compile time by depth: random models of a small width with 16, 32
and 80 layers, seconds of XLA compilation for one vInference batch (prefill + decode shapes) per
loop.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_layer_loop.py              # CPU, embedded model
    PYTHONPATH=. python3 benchmarks/bench_layer_loop.py --random-config llama-1b --dtype bfloat16

The persistent compilation cache is off here (compile seconds must be real).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["WORKBENCH_COMPILATION_CACHE"] = "0"

import workbench  # noqa: E402,F401 - its XLA flags, before JAX starts a backend
from benchmarks import common as C  # noqa: E402

LOOPS = ("scan", "unrolled")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--random-config", choices=sorted(C.RANDOM_CONFIGS), default=None)
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16")
    p.add_argument("--depths", default="16,32,80",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--width", type=int, default=256, help="hidden size of the depth models")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def warm_helpers(cfg, dtype, batch: int, prompts, sp) -> None:
    """Compile the programs around the model (sampling tensors, penalties, ...) with a one-layer
    model of the same widths, so the compile seconds measured next are the model's own."""
    from workbench.engines.vinference import vInference
    from workbench.loading.loader import random_model

    lm = random_model(dataclasses.replace(cfg, num_hidden_layers=1), dtype=dtype)
    with vInference(lm, max_batch_size=batch) as e:
        e.generate(prompts, sp)
    lm.close()


def speed(args, dtype) -> tuple[list, list]:
    import jax.numpy as jnp  # noqa: F401 - JAX starts here, after the flags

    from flax import nnx

    from workbench.engines.vinference import vInference
    from workbench.models.layer_loop import unstack_layers
    from workbench.models.registry import abstract_model
    from workbench.sampling_params import SamplingParams

    base = C.load_lm(args.random_config, dtype)
    if base.layer_loop != "scan":
        raise SystemExit("run without WORKBENCH_LAYER_LOOP: the benchmark builds both layouts")
    # the unrolled twin holds the same weights, split per layer
    graphdef, _ = nnx.split(abstract_model(base.config, dtype=base.dtype, layer_loop="unrolled"))
    twin = dataclasses.replace(base, graphdef=graphdef, state=unstack_layers(base.state),
                               layer_loop="unrolled")
    lms = {"scan": base, "unrolled": twin}
    N = args.max_tokens
    if base.tokenizer is not None:
        prompts = C.chat_prompts(base.tokenizer, max(args.batch_sizes), 40)
    else:
        prompts = C.random_token_prompts(max(args.batch_sizes), 40, base.config.vocab_size)
    sp = SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True)
    rows, results = [], []
    for B in args.batch_sizes:
        warm_helpers(base.config, base.dtype, B, prompts[:B], sp)
        engines = {k: vInference(lm, max_batch_size=B) for k, lm in lms.items()}
        tokens, compile_s, times = {}, {}, {k: [] for k in LOOPS}
        for k, e in engines.items():
            with C.CompileProbe() as probe:
                out = e.generate(prompts[:B], sp)
            compile_s[k] = (probe.seconds, probe.count)
            tokens[k] = [r.outputs[0].token_ids for r in out]
        for _ in range(args.runs):
            for k, e in engines.items():
                t0 = time.perf_counter()
                e.generate(prompts[:B], sp)
                times[k].append(time.perf_counter() - t0)
        floors = {k: C.measure_floor(base, B, min(N, 32), args.runs, layer_loop=k)[0]
                  for k in LOOPS}
        same = tokens["scan"] == tokens["unrolled"]
        for k in LOOPS:
            tps = B * N / C.median(times[k])
            ref = B * N / C.median(times["scan"])
            rows.append([k, B, tps, f"{tps / ref:.2f}x", floors[k],
                         f"{100 * tps / floors['unrolled']:.0f}%", compile_s[k][0],
                         compile_s[k][1], "yes" if same else "NO",
                         " ".join(f"{B * N / t:.1f}" for t in times[k])])
            results.append(dict(loop=k, batch=B, tok_s=tps, floor_tok_s=floors[k],
                                compile_s=compile_s[k][0], programs=compile_s[k][1],
                                same_tokens=same, times=times[k]))
        for e in engines.values():
            e.close()
        C.log(f"B={B} done")
    return rows, results


def depth_compile(args, dtype) -> tuple[list, list]:
    from workbench.engines.vinference import vInference
    from workbench.loading.loader import random_model
    from workbench.models.config import ModelConfig, resolve_dtype
    from workbench.sampling_params import SamplingParams

    rows, results = [], []
    sp = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    for L in args.depths:
        cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=4096,
                          hidden_size=args.width, intermediate_size=3 * args.width,
                          num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=args.width // 4, max_position_embeddings=4096,
                          eos_token_ids=(2,))
        warm_helpers(cfg, resolve_dtype(dtype), 8, [[5] * 40] * 8, sp)
        for k in LOOPS:
            lm = random_model(cfg, dtype=resolve_dtype(dtype), layer_loop=k)
            with vInference(lm, max_batch_size=8) as e, C.CompileProbe() as probe:
                e.generate([[5] * 40] * 8, sp)
            rows.append([L, k, probe.seconds, probe.count])
            results.append(dict(layers=L, loop=k, compile_s=probe.seconds, programs=probe.count))
            C.log(f"L={L} {k}: {probe.seconds:.1f}s")
            lm.close()
    return rows, results


def main(argv=None):
    args = parse_args(argv)
    dtype = args.dtype or ("float32" if args.random_config is None else "bfloat16")
    C.print_environment({"dtype": dtype, "model": args.random_config or "embedded SmolLM2-135M"})
    rows, speed_results = speed(args, dtype)
    C.print_table(["loop", "batch", "tok/s", "vs scan", "floor tok/s (same loop)",
                   "% of weights-only floor", "compile s", "programs", "same tokens",
                   "tok/s per run"], rows,
                  title=f"vInference, 40-token prompts, {args.max_tokens} new tokens "
                        f"(median of {args.runs}, loops alternating)")
    drows, depth_results = depth_compile(args, dtype) if args.depths else ([], [])
    if drows:
        C.print_table(["layers", "loop", "compile s", "programs"], drows,
                      title=f"compile seconds by depth (width {args.width}, one vInference "
                            f"batch of 8: prefill + decode shapes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=C.environment(), args=vars(args), speed=speed_results,
                           depth=depth_results), f, indent=1)


if __name__ == "__main__":
    main()
