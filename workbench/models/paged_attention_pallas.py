"""The Pallas kernel behind `paged_attention(..., kernel="pallas")`: each query block's attention
over its sequence's cached pages, read in place from the paged cache (no gather into a tile
buffer), with an online softmax. Everything else of `paged_attention` (a decode's own key, a
prompt chunk's own tokens, merging the two softmax states) stays in XLA.

Grid: one program per (query block n, KV head h). Program (n, h) holds the block's R = Qt * G
query rows of that head group (padded to a power of two), loops over the block's tiles (runs of
K pages of its past, as `ragged_batch.build_step` lists them: every block's tiles contiguous, in
block order, so the block's first tile is the running sum of the tile counts before it), loads
each page's `[S, D]` keys and values straight from the `[L * P, S, Hkv, D]` cache by its page
id, and folds their scores into the block's (max, sum, weighted values). The result is the same
softmax state `paged_attention`'s XLA loop produces, so the two paths share the merge.

Lowering: written to the Triton-backed Pallas GPU rules (power-of-two block shapes; a matrix
product only where every dimension is >= 16, else a broadcast multiply and a sum, which decode's
few rows per head make memory-bound anyway; on a GPU the rows are padded to 16 so that pages of
>= 16 positions always take the product; scalars read from whole-array refs). On a CPU the kernel
runs in Pallas' interpreter (tests: equal to the XLA path); on a TPU, where Mosaic wants scalar
prefetch and memory spaces instead, `paged_attention` keeps the XLA loop.

JAX's own `pallas.ops.gpu.paged_attention` was the other candidate: it takes one query per
sequence, head-major pages `[Hkv, P, S, D]` (this cache is `[L, P, S, Hkv, D]`), no sliding
window, and returns finished outputs, not the softmax state that merging a prompt chunk's own
tokens needs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

_NEG = -1e30


def supported() -> bool:
    """Where the kernel is compiled (GPU) or interpreted (CPU; tests)."""
    return jax.default_backend() in ("gpu", "cuda", "rocm", "cpu")


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _kernel(start_ref, count_ref, ctx_ref, base_ref, qpos_ref, pages_ref, pos0_ref, q_ref, k_ref,
            v_ref, m_ref, l_ref, o_ref, *, pages_per_tile: int, page_size: int,
            sliding_window: int | None, scale: float, use_dot: bool):
    n, h = pl.program_id(0), pl.program_id(1)
    q = q_ref[n, h].astype(jnp.float32)  # [R, D]
    q_pos = qpos_ref[n]  # [R]; pads: -1 (see nothing)
    ctx, base = ctx_ref[n], base_ref[0]
    S = page_size
    offsets = jax.lax.broadcasted_iota(jnp.int32, (1, S), 1)  # [1, S]

    def page(tile, kk, carry):
        m, l, o = carry
        p = base + pages_ref[tile, kk]
        k = k_ref[p, :, h, :].astype(jnp.float32)  # [S, D]
        v = v_ref[p, :, h, :].astype(jnp.float32)
        k_pos = pos0_ref[tile] + kk * S + offsets  # [1, S]
        if use_dot:
            s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32)
        else:
            s = jnp.sum(q[:, None, :] * k[None, :, :], axis=-1)  # [R, S]
        mask = (k_pos < ctx) & (k_pos <= q_pos[:, None])
        if sliding_window is not None:
            mask &= (q_pos[:, None] - k_pos) < sliding_window
        s = jnp.where(mask, s * scale, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        a = jnp.exp(m - m_new)
        e = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        if use_dot:
            pv = jnp.dot(e, v, preferred_element_type=jnp.float32)
        else:
            pv = jnp.sum(e[:, :, None] * v[None, :, :], axis=1)  # [R, D]
        return m_new, l * a + jnp.sum(e, axis=-1), o * a[:, None] + pv

    def tile(t, carry):
        for kk in range(pages_per_tile):  # static: K pages per tile
            carry = page(start_ref[n] + t, kk, carry)
        return carry

    R, D = q.shape
    init = (jnp.full((R,), _NEG, jnp.float32), jnp.zeros((R,), jnp.float32),
            jnp.zeros((R, D), jnp.float32))
    m, l, o = jax.lax.fori_loop(0, count_ref[n], tile, init)
    m_ref[n, h] = m
    l_ref[n, h] = l
    o_ref[n, h] = o


def past_stats(qb, q_pos, ctx, tile_pages, tile_pos0, k_pages, v_pages, layer_base, *,
               sliding_window, scale):
    """Softmax state of N query blocks over their cached past.

    qb `[N, Qt, Hkv, G, D]` queries, q_pos `[N, Qt]` (-1: pad), ctx `[N]` cached positions of
    each block's sequence, tile_pages `[M, K]` / tile_pos0 `[M]` the lane's tiles (block order,
    `ceil(ceil(ctx / S) / K)` per block), k/v_pages `[L * P, S, Hkv, D]`, layer_base the layer's
    first page row. Returns (max, sum, weighted values) `[N, Hkv, G, Qt(, D)]`, float32: the
    state `paged_attention._loop` builds over the same tiles."""
    N, Qt, Hkv, G, D = qb.shape
    K = tile_pages.shape[1]
    S = k_pages.shape[1]
    # rows padded to a power of two; on a GPU to >= 16 as well where pages and heads allow a
    # matrix product (tensor cores; decode's spare rows cost nothing in a memory-bound loop)
    R = Qt * G
    gpu_dot = jax.default_backend() != "cpu" and min(S, D) >= 16
    Rp = max(_pow2(R), 16) if gpu_dot else _pow2(R)
    q = qb.transpose(0, 2, 1, 3, 4).reshape(N, Hkv, R, D)  # row r = (query r // G, head r % G)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, Rp - R), (0, 0)))
    rows_pos = jnp.pad(jnp.repeat(q_pos, G, axis=1), ((0, 0), (0, Rp - R)), constant_values=-1)
    count = ((ctx + S - 1) // S + K - 1) // K  # tiles per block: runs of K of its past pages
    start = jnp.cumsum(count) - count
    kernel = functools.partial(_kernel, pages_per_tile=K, page_size=S,
                               sliding_window=sliding_window, scale=scale,
                               use_dot=min(Rp, S, D) >= 16)
    m, l, o = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((N, Hkv, Rp), jnp.float32),
                   jax.ShapeDtypeStruct((N, Hkv, Rp), jnp.float32),
                   jax.ShapeDtypeStruct((N, Hkv, Rp, D), jnp.float32)),
        grid=(N, Hkv),
        interpret=jax.default_backend() == "cpu",
    )(start.astype(jnp.int32), count.astype(jnp.int32), ctx.astype(jnp.int32),
      jnp.reshape(layer_base, (1,)).astype(jnp.int32), rows_pos.astype(jnp.int32),
      tile_pages.astype(jnp.int32), tile_pos0.astype(jnp.int32), q, k_pages, v_pages)

    def heads(x):  # [N, Hkv, Rp, ...] -> [N, Hkv, G, Qt, ...]
        x = x[:, :, :R].reshape(N, Hkv, Qt, G, *x.shape[3:])
        return jnp.moveaxis(x, 3, 2)

    return heads(m), heads(l), heads(o)
