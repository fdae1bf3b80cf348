"""Ragged paged attention in XLA: attention of a flat ragged batch (eSurge's step) over the pages
each sequence holds, whose cost follows the real lengths, not `max_model_len`.

Input: queries `q [T, H, D]` of T flat tokens (several sequences, each a contiguous chunk), this
chunk's own keys/values `[T, Hkv, D]`, and one layer of the paged cache `[P, S, Hkv, D]` (P pages
of S positions). A sequence's chunk starts at position `ctx` (its cached past: positions
`[0, ctx)`, in its pages) and sees the past plus its own earlier chunk tokens, causally.

NOTE: the one idea is a loop over KV tiles with an online softmax. The host (`ragged_batch.py`)
lists the work as tiles: (query block, run of `pages_per_tile` pages of its sequence's past). A
`lax.while_loop` runs as many iterations as there are tiles (`chunk` tiles per iteration, a
dynamic trip count, so one compiled shape serves every length): each gathers its pages, scores
them against the block's queries, and folds the result into the block's running (max, sum,
weighted values) with segment reductions, the arithmetic of one softmax over all of a row's keys.
Two lanes keep the query blocks dense:
- lane D: single-token chunks (decodes), one query per block; its own key is the initial state;
- lane P: multi-token chunks (prompt chunks, recomputes) in blocks of `query_block` tokens of one
  sequence; its own chunk is a second tile list (block, earlier-or-same block of its sequence).
A gather of the whole page table per token would read `max_model_len` positions per query; here a
decode reads its own pages once and a prompt chunk reads each page once per query block.

`naive_paged_attention` (NumPy) is the per-sequence reference the tests compare against.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from workbench.models import paged_attention_pallas

_NEG = -1e30
KERNELS = ("xla", "pallas")
# Steps of at most this many tokens attend lane P's chunks to their own tokens with one dense
# masked [T, T] product instead of the loop over fresh tiles: on the CPU a 256-token prompt chunk
# is 136 tiles of 16 x 16, nine loop iterations per layer whose fixed cost outweighs the
# arithmetic (see benchmarks/README.md, eSurge). Above it (an accelerator's 2048-token budget)
# the [H, T, T] scores would grow quadratically, and the loop stays.
DENSE_FRESH_MAX_TOKENS = 512


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LaneTiles:
    """One lane's work: N query blocks of Qt tokens and their tiles (static sizes per bucket)."""

    tok: jnp.ndarray  # [N, Qt] i32 flat token of each query (T = pad)
    ctx: jnp.ndarray  # [N] i32 cached positions before the block's sequence chunk
    tile_blk: jnp.ndarray  # [M] i32 query block of each past tile
    tile_pages: jnp.ndarray  # [M, K] i32 the tile's pages (a run of K pages of the sequence)
    tile_pos0: jnp.ndarray  # [M] i32 position of the tile's first key
    num_tiles: jnp.ndarray  # [] i32 real tiles (the rest is padding)
    fresh_blk: jnp.ndarray  # [F] i32 lane P: query block of each fresh tile
    fresh_src: jnp.ndarray  # [F] i32 lane P: the block whose chunk tokens are the keys
    num_fresh: jnp.ndarray  # [] i32
    chunk: int = dataclasses.field(metadata=dict(static=True))  # tiles per loop iteration


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagedAttentionMeta:
    decode: LaneTiles  # lane D (Qt = 1, no fresh tiles: a token's own key starts its softmax)
    prefill: LaneTiles  # lane P

    @classmethod
    def from_arrays(cls, arrays: dict, chunks: dict[str, int]) -> "PagedAttentionMeta":
        """From `ragged_batch` arrays named `{lane}_{field}` (lane "d" or "p"), with the tiles
        per loop iteration of each lane."""
        def lane(x):
            return LaneTiles(**{f.name: arrays[f"{x}_{f.name}"] for f in dataclasses.fields(LaneTiles)
                                if f.name != "chunk"}, chunk=chunks[x])

        return cls(decode=lane("d"), prefill=lane("p"))


def _visible(q_pos, k_pos, sliding_window):
    """[..., Qt, S] keys visible to queries: causal by position, optionally windowed."""
    mask = k_pos[..., None, :] <= q_pos[..., :, None]
    if sliding_window is not None:
        mask &= (q_pos[..., :, None] - k_pos[..., None, :]) < sliding_window
    return mask


def _tile_stats(qb, k, v, mask, scale):
    """qb [C, Qt, Hkv, G, D], k/v [C, S, Hkv, D], mask [C, Qt, S] -> per tile: max, sum and
    weighted values `[C, Hkv, G, Qt(, D)]`, float32."""
    s = jnp.einsum("cqhgd,cshd->chgqs", qb, k.astype(qb.dtype),
                   preferred_element_type=jnp.float32)
    s = jnp.where(mask[:, None, None], s * scale, _NEG)
    m = s.max(-1)
    e = jnp.where(mask[:, None, None], jnp.exp(s - m[..., None]), 0.0)
    o = jnp.einsum("chgqs,cshd->chgqd", e.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
    return m, e.sum(-1), o


def _fold(acc, blk, stats, num_blocks):
    """Merge per-tile stats into the blocks' running softmax state (online softmax). The tiles'
    blocks are reduced with a one-hot `[C, N]` (a masked max and a dot), which compiles and
    runs faster on the CPU than scatter-based segment reductions."""
    m_acc, l_acc, o_acc = acc
    m, l, o = stats
    onehot = blk[:, None] == jnp.arange(num_blocks)  # [C, N]
    m_tiles = jnp.where(onehot[:, :, None, None, None], m[:, None], _NEG).max(0)  # [N, ...]
    m_new = jnp.maximum(m_acc, m_tiles)
    a = jnp.exp(m_acc - m_new)
    w = jnp.exp(m - m_new[blk])
    sel = onehot.astype(jnp.float32)
    l_acc = l_acc * a + jnp.einsum("cn,chgq->nhgq", sel, l * w)
    o_acc = o_acc * a[..., None] + jnp.einsum("cn,chgqd->nhgqd", sel, o * w[..., None])
    return m_new, l_acc, o_acc


def _loop(acc, num, chunk, body):
    """Fold `body(tile indices [chunk], valid [chunk]) -> (blk, stats)` over `num` tiles."""
    def step(i, acc):
        idx = i * chunk + jnp.arange(chunk)
        blk, stats = body(idx, idx < num)
        return _fold(acc, blk, stats, acc[0].shape[0])

    return jax.lax.fori_loop(0, (num + chunk - 1) // chunk, step, acc)


def _merge(acc, stats):
    """Two softmax states of the same blocks `(max, sum, weighted values)` as one."""
    m_a, l_a, o_a = acc
    m_b, l_b, o_b = stats
    m = jnp.maximum(m_a, m_b)
    a, b = jnp.exp(m_a - m), jnp.exp(m_b - m)
    return m, l_a * a + l_b * b, o_a * a[..., None] + o_b * b[..., None]


def _fresh_dense(lane: LaneTiles, q, k_new, v_new, positions, *, sliding_window, scale):
    """Lane P's attention over its chunks' own tokens as one masked `[T, T]` attention of the
    flat batch (a token sees the earlier-or-same tokens of its own chunk), returned as the
    blocks' softmax state `[N, Hkv, G, Qt(, D)]`. Same result as the loop over fresh tiles;
    at small T (a CPU's token budget) one dense product costs far less than the loop's many
    small tiles (see DENSE_FRESH_MAX_TOKENS)."""
    T, H, D = q.shape
    Hkv = k_new.shape[1]
    N, Qt = lane.tok.shape
    F = lane.fresh_blk.shape[0]
    # which blocks see which: the fresh tiles list (block, earlier-or-same block of its chunk)
    ok = jnp.arange(F) < lane.num_fresh
    same = jnp.zeros((N + 1, N + 1), bool).at[
        jnp.where(ok, lane.fresh_blk, N + 1), jnp.where(ok, lane.fresh_src, N + 1)].set(
        True, mode="drop")  # row / column N: tokens outside lane P (see nothing)
    blk_of = jnp.full((T + 1,), N, jnp.int32).at[lane.tok.reshape(-1)].set(
        jnp.repeat(jnp.arange(N, dtype=jnp.int32), Qt), mode="drop")[:T]  # [T]
    mask = same[blk_of[:, None], blk_of[None, :]] & _visible(positions, positions,
                                                             sliding_window)  # [Tq, Tk]
    qg = q.reshape(T, Hkv, H // Hkv, D)
    s = jnp.einsum("thgd,uhd->hgtu", qg, k_new.astype(q.dtype),
                   preferred_element_type=jnp.float32)
    s = jnp.where(mask, s * scale, _NEG)  # [Hkv, G, T, T]
    m = s.max(-1)
    e = jnp.where(mask, jnp.exp(s - m[..., None]), 0.0)
    o = jnp.einsum("hgtu,uhd->hgtd", e.astype(v_new.dtype), v_new,
                   preferred_element_type=jnp.float32)
    tok = jnp.minimum(lane.tok, T - 1)  # [N, Qt]; pads' results are dropped by the caller
    return (m[:, :, tok].transpose(2, 0, 1, 3), e.sum(-1)[:, :, tok].transpose(2, 0, 1, 3),
            o[:, :, tok].transpose(2, 0, 1, 3, 4))


def _lane(lane: LaneTiles, q, k_new, v_new, positions, k_pages, v_pages, layer_base, *,
          sliding_window, scale, fresh_is_self, kernel):
    """Attention output `[N, Qt, H, D]` of one lane's query blocks."""
    T, H, D = q.shape
    Hkv = k_new.shape[1]
    N, Qt = lane.tok.shape
    tok = jnp.minimum(lane.tok, T - 1)
    qb = q[tok].reshape(N, Qt, Hkv, H // Hkv, D)  # [N, Qt, Hkv, G, D]
    q_pos = jnp.where(lane.tok < T, positions[tok], -1)  # [N, Qt]; pads see nothing
    S = lane.tile_pages.shape[1] * k_pages.shape[1]  # keys per tile: K pages of page_size

    if fresh_is_self:  # a single-token chunk: its own key starts the softmax
        s = jnp.einsum("nqhgd,nqhd->nhgq", qb, k_new[tok].astype(q.dtype),
                       preferred_element_type=jnp.float32) * scale
        acc = (s, jnp.ones_like(s),
               jnp.broadcast_to(v_new[tok].astype(jnp.float32).transpose(0, 2, 1, 3)[:, :, None],
                                (N, Hkv, H // Hkv, Qt, D)))
    else:
        acc = (jnp.full((N, Hkv, H // Hkv, Qt), _NEG, jnp.float32),
               jnp.zeros((N, Hkv, H // Hkv, Qt), jnp.float32),
               jnp.zeros((N, Hkv, H // Hkv, Qt, D), jnp.float32))

    def past(idx, valid):  # tiles of cached pages
        idx = jnp.minimum(idx, lane.tile_blk.shape[0] - 1)
        blk = lane.tile_blk[idx]  # [C]
        pages = layer_base + lane.tile_pages[idx]  # [C, K] rows of the [L*P, S, Hkv, D] cache
        C = idx.shape[0]
        k = k_pages[pages].reshape(C, S, Hkv, D)
        v = v_pages[pages].reshape(C, S, Hkv, D)
        k_pos = lane.tile_pos0[idx][:, None] + jnp.arange(S)  # [C, S]
        seen = valid[:, None] & (k_pos < lane.ctx[blk][:, None])  # the past only
        mask = _visible(q_pos[blk], k_pos, sliding_window) & seen[:, None, :]
        return blk, _tile_stats(qb[blk], k, v, mask, scale)

    if kernel == "pallas":  # the same state, read from the pages in place
        acc = _merge(acc, paged_attention_pallas.past_stats(
            qb, q_pos, lane.ctx, lane.tile_pages, lane.tile_pos0, k_pages, v_pages, layer_base,
            sliding_window=sliding_window, scale=scale))
    else:
        acc = _loop(acc, lane.num_tiles, lane.chunk, past)
    if not fresh_is_self and T <= DENSE_FRESH_MAX_TOKENS:
        acc = _merge(acc, _fresh_dense(lane, q, k_new, v_new, positions,
                                       sliding_window=sliding_window, scale=scale))
    elif not fresh_is_self:
        def fresh(idx, valid):  # tiles of this chunk's own tokens
            idx = jnp.minimum(idx, lane.fresh_blk.shape[0] - 1)
            blk, src = lane.fresh_blk[idx], lane.fresh_src[idx]
            ktok = lane.tok[src]  # [C, Qt] key tokens
            k_pos = jnp.where(valid[:, None] & (ktok < T), positions[jnp.minimum(ktok, T - 1)],
                              jnp.iinfo(jnp.int32).max)
            mask = _visible(q_pos[blk], k_pos, sliding_window)
            kt = jnp.minimum(ktok, T - 1)
            return blk, _tile_stats(qb[blk], k_new[kt], v_new[kt], mask, scale)

        acc = _loop(acc, lane.num_fresh, lane.chunk, fresh)
    _, l_acc, o_acc = acc
    out = o_acc / jnp.maximum(l_acc, jnp.finfo(jnp.float32).tiny)[..., None]
    return out.transpose(0, 3, 1, 2, 4).reshape(N, Qt, H, D)  # [N, Qt, H, D]


def paged_attention(q, k_new, v_new, positions, k_cache, v_cache, layer, meta: PagedAttentionMeta,
                    *, sliding_window=None, scale=None, kernel: str = "xla"):
    """Attention `[T, H, D]` of flat queries q `[T, H, D]` at `positions` `[T]` (-1 = pad) over
    the paged past of `layer` in `k_cache`/`v_cache` `[L, P, S, Hkv, D]` and the chunk's own keys
    and values `[T, Hkv, D]`, as laid out by `meta` (see the module docstring). Pads give 0.
    `kernel`: how the cached past is read, one of `KERNELS`: "xla" (the tile loop above) or
    "pallas" (`paged_attention_pallas`: pages read in place; GPU, or interpreted on a CPU)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown paged attention kernel {kernel!r}; available: "
                         f"{', '.join(KERNELS)}")
    q, k_new, v_new, positions, k_cache, v_cache = (
        jnp.asarray(x) for x in (q, k_new, v_new, positions, k_cache, v_cache))
    T, H, D = q.shape
    L, P, S, Hkv, _ = k_cache.shape
    scale = D**-0.5 if scale is None else scale
    k_pages = k_cache.reshape(L * P, S, Hkv, D)  # a free reshape: gathers index the whole cache
    v_pages = v_cache.reshape(L * P, S, Hkv, D)
    args = dict(q=q, k_new=k_new, v_new=v_new, positions=positions, k_pages=k_pages,
                v_pages=v_pages, layer_base=layer * P, sliding_window=sliding_window, scale=scale,
                kernel=kernel)
    out = jnp.zeros((T, H, D), jnp.float32)
    d = _lane(meta.decode, fresh_is_self=True, **args)  # [ND, 1, H, D]
    out = out.at[meta.decode.tok.reshape(-1)].set(d.reshape(-1, H, D), mode="drop")
    if meta.prefill.tok.shape[0]:
        p = _lane(meta.prefill, fresh_is_self=False, **args)  # [NP, Qt, H, D]
        out = out.at[meta.prefill.tok.reshape(-1)].set(p.reshape(-1, H, D), mode="drop")
    return out.astype(q.dtype)


def naive_paged_attention(q, k_new, v_new, positions, seq_of, k_cache, v_cache, layer,
                          page_ids, ctx, *, sliding_window=None, scale=None) -> np.ndarray:
    """Reference, one sequence and one query at a time in NumPy float64: sequence `s` (tokens
    with `seq_of == s`) sees its cached positions `[0, ctx[s])` in pages `page_ids[s]` and its
    chunk tokens at or before the query's position."""
    q, k_new, v_new = (np.asarray(x, np.float64) for x in (q, k_new, v_new))
    kc, vc = np.asarray(k_cache[layer], np.float64), np.asarray(v_cache[layer], np.float64)
    T, H, D = q.shape
    S, Hkv = kc.shape[1], kc.shape[2]
    scale = D**-0.5 if scale is None else scale
    out = np.zeros((T, H, D))
    for t in range(T):
        s, p = seq_of[t], positions[t]
        if s < 0 or p < 0:
            continue
        past = np.arange(ctx[s])
        keys = [kc[page_ids[s][i // S], i % S] for i in past]
        vals = [vc[page_ids[s][i // S], i % S] for i in past]
        kpos = list(past)
        for u in range(T):
            if seq_of[u] == s and 0 <= positions[u] <= p:
                keys.append(k_new[u])
                vals.append(v_new[u])
                kpos.append(positions[u])
        keys, vals, kpos = np.array(keys), np.array(vals), np.array(kpos)  # [n, Hkv, D]
        if sliding_window is not None:
            keep = p - kpos < sliding_window
            keys, vals = keys[keep], vals[keep]
        for h in range(H):
            g = h // (H // Hkv)
            w = keys[:, g] @ q[t, h] * scale
            w = np.exp(w - w.max())
            out[t, h] = (w / w.sum()) @ vals[:, g]
    return out
