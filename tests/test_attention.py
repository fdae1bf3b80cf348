"""Attention backends agree with the XLA reference; masks come from positions only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models.attention import BACKENDS, MASKED_POSITION, get_attention, xla_attention


def _heads(x):
    """`[B, S, Hkv, D]` <-> `[B, Hkv, S, D]` (the naive reference indexes keys sequence-major)."""
    return jnp.swapaxes(jnp.asarray(x), 1, 2)


def _inputs(B=2, T=5, S=9, H=4, Hkv=2, D=8, seed=0):
    """Keys/values head-major `[B, Hkv, S, D]`, as the backends take them."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(k1, (B, T, H, D))
    k = jax.random.normal(k2, (B, Hkv, S, D))
    v = jax.random.normal(k3, (B, Hkv, S, D))
    q_pos = jnp.array([[4, 5, 6, 7, 8], [-1, -1, 0, 1, 2]])[:, 5 - T:]
    k_pos = jnp.broadcast_to(jnp.arange(S), (B, S)).at[1, 3:].set(MASKED_POSITION)
    return q, k, v, q_pos, k_pos


def _naive(q, k, v, q_pos, k_pos, window=None):
    """Loops over rows, queries and heads; k/v sequence-major `[B, S, Hkv, D]`."""
    q, k, v = map(np.asarray, (q, k, v))
    B, T, H, D = q.shape
    G = H // k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for t in range(T):
            for h in range(H):
                vis = [s for s in range(k.shape[1]) if k_pos[b, s] <= q_pos[b, t] and
                       (window is None or q_pos[b, t] - k_pos[b, s] < window)]
                if not vis:
                    continue
                sc = np.array([q[b, t, h] @ k[b, s, h // G] for s in vis]) / np.sqrt(D)
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[b, t, h] = sum(pi * v[b, s, h // G] for pi, s in zip(p, vis))
    return out


@pytest.mark.parametrize("T", [5, 1])  # 1: the decode step (multiply-and-reduce on the CPU)
@pytest.mark.parametrize("window", [None, 3])
def test_reference_matches_naive_loops(window, T):
    q, k, v, qp, kp = _inputs(T=T)
    got = np.asarray(xla_attention(q, k, v, qp, kp, sliding_window=window))
    want = _naive(q, _heads(k), _heads(v), np.asarray(qp), np.asarray(kp), window)
    valid = np.asarray(qp) >= 0
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
    assert np.isfinite(got).all()  # fully masked (pad) queries give finite garbage, not NaN


@pytest.mark.parametrize("name", sorted(BACKENDS))
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("T", [5, 1])
def test_every_backend_matches_reference(name, window, T):
    q, k, v, qp, kp = _inputs(seed=1, T=T)
    ref = np.asarray(xla_attention(q, k, v, qp, kp, sliding_window=window))
    got = np.asarray(get_attention(name)(q, k, v, qp, kp, sliding_window=window))
    valid = np.asarray(qp) >= 0
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match="available: dot_product_attention, xla"):
        get_attention("flash9000")


def _ragged_case(T, seed=0):
    """A one-layer contiguous cache whose rows hold 0 (pad row), 7, 13 and 20 past positions,
    and a chunk of T new tokens per row: returns the naive reference too."""
    from workbench.models.kv_cache import ContiguousKVCache

    B, S, H, Hkv, D = 4, 24, 4, 2, 8
    lens = np.array([0, 7, 13, 20])
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (B, T, H, D))
    ck = jax.random.normal(ks[1], (1, B, Hkv, S, D))  # the cache's head-major layout
    cv = jax.random.normal(ks[2], (1, B, Hkv, S, D))
    fk = jax.random.normal(ks[3], (B, Hkv, T, D))
    fv = jax.random.normal(ks[4], (B, Hkv, T, D))
    q_pos = lens[:, None] + np.arange(T)[None]
    q_pos[0] = -1  # pad row
    cache = ContiguousKVCache(k=ck, v=cv)
    return cache, q, jnp.asarray(q_pos), (fk, fv), lens


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("block_size", [1, 3, 8, 64])
@pytest.mark.parametrize("window", [None, 4])
def test_ragged_attention_matches_naive_over_each_rows_own_past(T, block_size, window):
    from workbench.models.attention import ragged_attention
    from workbench.models.kv_cache import blocks_needed, fresh_key_positions

    cache, q, q_pos, (fk, fv), lens = _ragged_case(T)
    need = blocks_needed(lens, block_size)
    for spare in (0, 5):  # exactly enough blocks, and unused entries at the end
        planned = cache.with_blocks(need + spare, block_size).plan(q_pos)
        got = np.asarray(ragged_attention(q, q_pos, planned.read_ragged(0),
                                          (fk, fv, fresh_key_positions(q_pos)),
                                          sliding_window=window))
        assert np.isfinite(got).all()
        for b in range(1, 4):  # row b: its own past (positions < lens[b]) then the chunk
            n = lens[b]
            k = np.concatenate([np.asarray(cache.k[0, b, :, :n]), np.asarray(fk[b])], axis=1)
            v = np.concatenate([np.asarray(cache.v[0, b, :, :n]), np.asarray(fv[b])], axis=1)
            k, v = _heads(k[None]), _heads(v[None])
            k_pos = np.arange(n + T)[None]
            want = _naive(q[b:b + 1], k, v, np.asarray(q_pos[b:b + 1]), k_pos, window)
            np.testing.assert_allclose(got[b], want[0], atol=1e-5)


def test_ragged_plan_covers_each_row_exactly_and_too_few_blocks_show():
    from workbench.models.attention import ragged_attention
    from workbench.models.kv_cache import blocks_needed, fresh_key_positions

    cache, q, q_pos, (fk, fv), lens = _ragged_case(1, seed=3)
    assert blocks_needed(lens, 3) == 0 + 3 + 5 + 7
    plan = cache.with_blocks(17, 3).plan(q_pos).blocks
    seen = {(int(r), int(p)) for r, ps in zip(plan.row, plan.k_pos) for p in ps
            if p != MASKED_POSITION}
    assert seen == {(b, p) for b in range(4) for p in range(lens[b])}
    fresh = (fk, fv, fresh_key_positions(q_pos))
    full = ragged_attention(q, q_pos, cache.with_blocks(15, 3).plan(q_pos).read_ragged(0), fresh)
    short = ragged_attention(q, q_pos, cache.with_blocks(14, 3).plan(q_pos).read_ragged(0), fresh)
    assert np.abs(np.asarray(full[3]) - np.asarray(short[3])).max() > 1e-3  # last block dropped
    np.testing.assert_allclose(np.asarray(full[:3]), np.asarray(short[:3]), atol=1e-6)
