"""Attention backends agree with the XLA reference; masks come from positions only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models.attention import BACKENDS, MASKED_POSITION, get_attention, xla_attention


def _inputs(B=2, T=5, S=9, H=4, Hkv=2, D=8, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(k1, (B, T, H, D))
    k = jax.random.normal(k2, (B, S, Hkv, D))
    v = jax.random.normal(k3, (B, S, Hkv, D))
    q_pos = jnp.array([[4, 5, 6, 7, 8], [-1, -1, 0, 1, 2]])
    k_pos = jnp.broadcast_to(jnp.arange(S), (B, S)).at[1, 3:].set(MASKED_POSITION)
    return q, k, v, q_pos, k_pos


def _naive(q, k, v, q_pos, k_pos, window=None):
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


@pytest.mark.parametrize("window", [None, 3])
def test_reference_matches_naive_loops(window):
    q, k, v, qp, kp = _inputs()
    got = np.asarray(xla_attention(q, k, v, qp, kp, sliding_window=window))
    want = _naive(q, k, v, np.asarray(qp), np.asarray(kp), window)
    valid = np.asarray(qp) >= 0
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
    assert np.isfinite(got).all()  # fully masked (pad) queries give finite garbage, not NaN


@pytest.mark.parametrize("name", sorted(BACKENDS))
@pytest.mark.parametrize("window", [None, 4])
def test_every_backend_matches_reference(name, window):
    q, k, v, qp, kp = _inputs(seed=1)
    ref = np.asarray(xla_attention(q, k, v, qp, kp, sliding_window=window))
    got = np.asarray(get_attention(name)(q, k, v, qp, kp, sliding_window=window))
    valid = np.asarray(qp) >= 0
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match="available: dot_product_attention, xla"):
        get_attention("flash9000")
