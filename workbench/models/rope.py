"""Rotary position embeddings (HF "rotate_half" layout), with `llama3` frequency scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from workbench.models.config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies `[D/2]` in float32, scaled as the config's rope type asks."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = cfg.rope_scaling
    if rs.rope_type == "llama3":
        # NOTE: Llama 3.1 keeps high frequencies, divides low ones by `factor`, and blends between.
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(is_medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_cos_sin(positions: jnp.ndarray, inv_freq: jnp.ndarray, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin `[B, T, D]` for integer positions `[B, T]`."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([angles, angles], axis=-1)  # [B, T, D]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate `x` `[B, T, H, D]` by cos/sin `[B, T, D]`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
