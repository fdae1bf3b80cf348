"""Attention backends behind one function.

Every backend computes causal (optionally sliding-window) grouped-query attention where the mask is
derived from positions only: key j is visible to a query at position p when `k_pos[j] <= p` (and
`p - k_pos[j] < window`). Pad keys carry a huge position so they are never visible; a cache slot not
yet written lies at a position above every live query, so stale cache contents are never read.

Layout: queries are `[B, T, H, D]` (as the projections give them); keys and values are head-major
`[B, Hkv, S, D]`, the KV cache's own layout (see `kv_cache.py`), so a decode step reads the cache
in place: with `[B, S, Hkv, D]` XLA transposed every layer's cache before its dots (measured: a
quarter of the thread time of a batch-32 CPU decode step over a dense 256-position read).

- `xla`: the reference implementation in plain jnp (always available; used by tests). A
  single-token query over a dense read on the CPU (a decode step with `decode_read="prefix"`)
  computes scores and the weighted sum as multiply-and-reduce over the cache instead of a
  batched dot with a 1-token M dimension (~1.5x faster there; see `_decode_products`).
- `dot_product_attention`: `jax.nn.dot_product_attention` (cuDNN flash attention on GPU when the
  shapes allow it, XLA elsewhere). Tested against `xla`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Position given to keys that must never be attended to (pads, unwritten slots).
MASKED_POSITION = jnp.iinfo(jnp.int32).max
_NEG = -1e30


def visibility_mask(q_pos: jnp.ndarray, k_pos: jnp.ndarray, sliding_window: int | None) -> jnp.ndarray:
    """Boolean `[B, T, S]`: may query t see key s. q_pos `[B, T]`, k_pos `[B, S]`."""
    mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if sliding_window is not None:
        mask &= (q_pos[:, :, None] - k_pos[:, None, :]) < sliding_window
    return mask


def _decode_products() -> bool:
    """Multiply-and-reduce instead of dots for single-token queries over a dense read: on the
    CPU only (2 cores, 30 layers in a scan, batch 32 over 256 cached positions: 54 ms against
    83 ms for the batched dots). Accelerators keep the dots their matrix units run, and ragged
    reads (blocks of 64 positions) keep them too: there the dots measured as fast or faster."""
    return jax.default_backend() == "cpu"


def _scores(qg, k, products=True):
    """qg `[B, T, Hkv, G, D]`, k `[B, Hkv, S, D]` -> float32 scores `[B, Hkv, G, T, S]`."""
    if products and qg.shape[1] == 1 and _decode_products():
        s = jnp.sum(qg[:, 0, :, :, None, :].astype(jnp.float32) * k[:, :, None].astype(jnp.float32),
                    axis=-1)  # [B, Hkv, G, S]
        return s[:, :, :, None]
    return jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32)


def _weighted(p, v, products=True):
    """p `[B, Hkv, G, T, S]`, v `[B, Hkv, S, D]` -> float32 `[B, Hkv, G, T, D]`."""
    if products and p.shape[3] == 1 and _decode_products():
        o = jnp.sum(p[:, :, :, 0, :, None].astype(jnp.float32) * v[:, :, None].astype(jnp.float32),
                    axis=-2)  # [B, Hkv, G, D]
        return o[:, :, :, None]
    return jnp.einsum("bkgts,bksd->bkgtd", p, v, preferred_element_type=jnp.float32)


def _merge_heads(out, dtype):
    """`[B, Hkv, G, T, D]` -> `[B, T, H, D]`."""
    B, Hkv, G, T, D = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, Hkv * G, D).astype(dtype)


def xla_attention(q, k, v, q_pos, k_pos, *, sliding_window=None, scale=None):
    """q `[B, T, H, D]`, k/v `[B, Hkv, S, D]`, q_pos `[B, T]`, k_pos `[B, S]` -> `[B, T, H, D]`."""
    B, T, H, D = q.shape
    Hkv = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    qg = q.reshape(B, T, Hkv, H // Hkv, D)  # [B, T, Hkv, G, D]
    scores = _scores(qg, k) * scale
    mask = visibility_mask(q_pos, k_pos, sliding_window)  # [B, T, S]
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # [B, Hkv, G, T, S]
    return _merge_heads(_weighted(probs, v), q.dtype)


def dpa_attention(q, k, v, q_pos, k_pos, *, sliding_window=None, scale=None):
    """`jax.nn.dot_product_attention` with the same position mask (GQA handled by JAX); it takes
    `[B, S, Hkv, D]` keys, so this backend transposes the head-major cache."""
    mask = visibility_mask(q_pos, k_pos, sliding_window)[:, None]  # [B, 1, T, S]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)


BACKENDS: dict[str, Callable] = {
    "xla": xla_attention,
    "dot_product_attention": dpa_attention,
}


def get_attention(name: str) -> Callable:
    """Look up an attention backend by name; unknown names raise ValueError listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention backend {name!r}; available: {', '.join(sorted(BACKENDS))}"
        ) from None


def _merged_xla_attention(q, blocks, q_pos, sliding_window, scale=None):
    """Softmax over several key blocks at once without concatenating them (no copy of the
    cache): scores per block, one shared max and normalizer."""
    B, T, H, D = q.shape
    Hkv = blocks[0][0].shape[1]
    scale = D**-0.5 if scale is None else scale
    qg = q.reshape(B, T, Hkv, H // Hkv, D)
    scores = []
    for k, _, k_pos in blocks:
        s = _scores(qg, k.astype(q.dtype)) * scale
        mask = visibility_mask(q_pos, k_pos, sliding_window)
        scores.append(jnp.where(mask[:, None, None], s, _NEG))
    m = jnp.max(jnp.stack([s.max(-1) for s in scores]), axis=0)[..., None]  # [B, Hkv, G, T, 1]
    probs = [jnp.exp(s - m) for s in scores]
    denom = sum(p.sum(-1, keepdims=True) for p in probs)
    out = sum(_weighted((p / denom).astype(q.dtype), v.astype(q.dtype))
              for p, (_, v, _) in zip(probs, blocks))
    return _merge_heads(out, q.dtype)


def ragged_attention(q, q_pos, cached, fresh, *, sliding_window=None, scale=None):
    """Attention of q `[B, T, H, D]` (positions `[B, T]`) over a ragged cached past plus the
    current chunk, in plain jnp.

    cached: (keys `[P, Hkv, S, D]`, values `[P, Hkv, S, D]`, row `[P]`, key positions `[P, S]`):
        P gathered blocks of S positions, block p belonging to query row `row[p]` (see
        `kv_cache.plan_blocks`); invisible entries carry MASKED_POSITION.
    fresh: (keys `[B, Hkv, T, D]`, values, key positions `[B, T]`) of the current chunk.

    Each block gets its own softmax statistics (max, sum, weighted values); the blocks of a row
    and its fresh keys are then merged with segment reductions over `row`, the same arithmetic as
    a softmax over the row's concatenated keys.
    """
    B, T, H, D = q.shape
    ck, cv, row, c_pos = cached
    fk, fv, f_pos = fresh
    Hkv = fk.shape[1]
    scale = D**-0.5 if scale is None else scale
    qg = q.reshape(B, T, Hkv, H // Hkv, D)

    def block_stats(qg, k, v, q_pos, k_pos):  # per block: max, sum of exp, exp-weighted values
        s = _scores(qg, k.astype(q.dtype), products=False) * scale
        mask = visibility_mask(q_pos, k_pos, sliding_window)[:, None, None]  # [N, 1, 1, T, S]
        s = jnp.where(mask, s, _NEG)
        m = s.max(-1)  # [N, Hkv, G, T]
        e = jnp.where(mask, jnp.exp(s - m[..., None]), 0.0)
        return m, e.sum(-1), _weighted(e.astype(q.dtype), v.astype(q.dtype), products=False)

    m_c, l_c, o_c = block_stats(qg[row], ck, cv, q_pos[row], c_pos)  # [P, ...]
    m_f, l_f, o_f = block_stats(qg, fk, fv, q_pos, f_pos)  # [B, ...]
    m = jnp.maximum(jax.ops.segment_max(m_c, row, num_segments=B), m_f)  # [B, Hkv, G, T]
    w_c, w_f = jnp.exp(m_c - m[row]), jnp.exp(m_f - m)
    denom = jax.ops.segment_sum(l_c * w_c, row, num_segments=B) + l_f * w_f
    out = jax.ops.segment_sum(o_c * w_c[..., None], row, num_segments=B) + o_f * w_f[..., None]
    out = out / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)[..., None]  # pad rows: 0
    return _merge_heads(out, q.dtype)


def attend(backend: str, q, blocks, q_pos, *, sliding_window=None):
    """Attention of q `[B, T, H, D]` over one or more (keys, values, key positions) blocks, e.g.
    the cached past and the current chunk. The XLA backend merges blocks without a copy; other
    backends see the concatenation."""
    if len(blocks) == 1:  # keys/values of each block: `[B, Hkv, S, D]`
        k, v, k_pos = blocks[0]
        return get_attention(backend)(q, k.astype(q.dtype), v.astype(q.dtype), q_pos, k_pos,
                                      sliding_window=sliding_window)
    if backend == "xla":
        return _merged_xla_attention(q, blocks, q_pos, sliding_window)
    k = jnp.concatenate([b[0].astype(q.dtype) for b in blocks], axis=2)
    v = jnp.concatenate([b[1].astype(q.dtype) for b in blocks], axis=2)
    k_pos = jnp.concatenate([b[2] for b in blocks], axis=1)
    return get_attention(backend)(q, k, v, q_pos, k_pos, sliding_window=sliding_window)
