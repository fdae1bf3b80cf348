"""eSurge's paged attention: the XLA tile loop against the Pallas kernel (`attention_kernel`),
one layer, on whatever device JAX has. For each step shape it checks that the two agree and
times both (median of `--runs` after a warm-up), then prints a table and the ratio.

    PYTHONPATH=. python3 benchmarks/bench_paged_attention.py             # Llama-3.2-1B heads
    PYTHONPATH=. python3 benchmarks/bench_paged_attention.py --quick     # small, CPU-friendly

Step shapes (Llama-3.2-1B attention: 32 query heads, 8 KV heads, head size 64, pages of 16):
- decode: `--seqs` single-token chunks, each with `--context` cached positions;
- mixed: a prompt chunk of `--chunk` tokens at `--context` plus `--seqs` - 1 decodes.
On a CPU the kernel runs in Pallas' interpreter: its time there says nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from workbench.engines.esurge_runner import QUERY_BLOCK, TILE_KEYS
from workbench.engines.ragged_batch import StepLayout, build_step
from workbench.models.paged_attention import (
    KERNELS,
    PagedAttentionMeta,
    paged_attention,
)


def make_step(spec, *, heads, kv_heads, head_dim, page_size, dtype, seed=0):
    """A step of chunks `spec` [(cached past, tokens)] over random pages and random K/V."""
    rng = np.random.default_rng(seed)
    T = 1 << max(0, sum(n for _, n in spec) - 1).bit_length()
    max_pages = max(math.ceil((c + n) / page_size) for c, n in spec)
    num_pages = sum(math.ceil((c + n) / page_size) for c, n in spec) + 1
    layout = StepLayout(num_tokens=T, max_num_seqs=len(spec), page_size=page_size,
                        num_pages=num_pages, max_pages=max_pages, query_block=QUERY_BLOCK,
                        pages_per_tile=max(1, TILE_KEYS // page_size))
    free = list(rng.permutation(num_pages))
    chunks = []
    for row, (ctx, n) in enumerate(spec):
        pages = [int(free.pop()) for _ in range(math.ceil((ctx + n) / page_size))]
        chunks.append(types.SimpleNamespace(start=ctx, num_tokens=n, token_ids=[1] * n,
                                            from_device=False, samples=True, output_pos=0,
                                            page_ids=pages, row=row))
    a = {k: jnp.asarray(v) for k, v in layout.unpack(build_step(chunks, layout)).items()}
    meta = PagedAttentionMeta.from_arrays(a, {"d": layout.lane_chunk("d"),
                                              "p": layout.lane_chunk("p")})

    def rand(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    q, k_new, v_new = rand(T, heads, head_dim), rand(T, kv_heads, head_dim), rand(
        T, kv_heads, head_dim)
    k_cache = rand(1, num_pages, page_size, kv_heads, head_dim)
    v_cache = rand(1, num_pages, page_size, kv_heads, head_dim)
    return (q, k_new, v_new, a["positions"], k_cache, v_cache, 0, meta), a["positions"] >= 0


def time_kernel(args, kernel: str, runs: int) -> tuple[float, np.ndarray]:
    fn = jax.jit(lambda *a: paged_attention(*a, kernel=kernel))
    out = fn(*args)
    out.block_until_ready()  # compile
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), np.asarray(out, np.float32)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", type=int, default=64)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--heads", type=str, default="32,8,64", help="query heads, KV heads, head size")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="4 sequences at 64 positions, 3 runs")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.seqs, a.context, a.chunk, a.runs, a.heads = 4, 64, 16, 3, "4,2,16"
    H, Hkv, D = (int(x) for x in a.heads.split(","))
    dtype = jnp.dtype(a.dtype)
    shapes = {"decode": [(a.context, 1)] * a.seqs,
              "mixed": [(a.context, a.chunk)] + [(a.context, 1)] * (a.seqs - 1)}
    rows = []
    print(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), {H}/{Hkv} heads of "
          f"{D}, pages of {a.page_size}, {a.dtype}")
    print("| step | tokens | xla ms | pallas ms | xla / pallas | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, spec in shapes.items():
        args, real = make_step(spec, heads=H, kv_heads=Hkv, head_dim=D, page_size=a.page_size,
                               dtype=dtype)
        times, outs = {}, {}
        for kernel in KERNELS:
            times[kernel], outs[kernel] = time_kernel(args, kernel, a.runs)
        real = np.asarray(real)
        diff = float(np.abs(outs["xla"][real] - outs["pallas"][real]).max())
        tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
        row = {"step": name, "tokens": sum(n for _, n in spec), "context": a.context,
               "xla_ms": 1e3 * times["xla"], "pallas_ms": 1e3 * times["pallas"],
               "speedup": times["xla"] / times["pallas"], "max_abs_diff": diff,
               "agree": diff <= tol}
        rows.append(row)
        print(f"| {name} | {row['tokens']} | {row['xla_ms']:.2f} | {row['pallas_ms']:.2f} | "
              f"{row['speedup']:.2f}x | {diff:.2g}{'' if row['agree'] else ' (DISAGREE)'} |")
    result = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
              "heads": [H, Hkv, D], "page_size": a.page_size, "dtype": a.dtype, "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    if not all(r["agree"] for r in rows):
        print("the kernels disagree", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
