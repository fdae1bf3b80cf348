"""Mesh construction and partition rules for params and KV cache.

Axes: `dp` (data parallel over the batch) and `tp` (tensor parallel over attention heads and the MLP
hidden dimension). Rules are (regex on the parameter path, spec of the unstacked parameter); stacked
per-layer parameters get a leading `None` for their `[L]` axis.

Fallback when a size does not divide by `tp` (documented behaviour, not an error): the affected group
is replicated instead of sharded. Attention projections shard only when both `num_attention_heads`
and `num_key_value_heads` divide by `tp` (a head is never split across devices); MLP kernels only
when `intermediate_size` does; embeddings / LM head only when `vocab_size` does. Results are the same
either way, only the memory and communication differ. `describe_fallbacks` says what was replicated.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from workbench.models.config import ModelConfig
from workbench.models.layer_loop import is_stacked

PARTITION_RULES: list[tuple[str, tuple, str]] = [
    # (path regex, spec for the unstacked param, group that must divide by tp)
    (r"self_attn/(q|k|v)_proj/kernel$", (None, "tp"), "heads"),
    (r"self_attn/(q|k|v)_proj/bias$", ("tp",), "heads"),
    (r"self_attn/o_proj/kernel$", ("tp", None), "heads"),
    (r"mlp/(gate|up)_proj/kernel$", (None, "tp"), "mlp"),
    (r"mlp/down_proj/kernel$", ("tp", None), "mlp"),
    (r"embed_tokens/embedding$", ("tp", None), "vocab"),
    (r"lm_head/kernel$", (None, "tp"), "vocab"),
]


def make_mesh(mesh: Mesh | Mapping[str, int] | int | None) -> Mesh | None:
    """A `Mesh` from a Mesh, {"dp": a, "tp": b}, or an int (tp size); None stays None."""
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    sizes = {"dp": 1, "tp": mesh} if isinstance(mesh, int) else {"dp": 1, "tp": 1, **mesh}
    unknown = set(sizes) - {"dp", "tp"}
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use 'dp' and 'tp'")
    need = sizes["dp"] * sizes["tp"]
    devices = jax.devices()
    if need < 1 or need > len(devices):
        raise ValueError(f"mesh dp={sizes['dp']} x tp={sizes['tp']} needs {need} devices; "
                         f"{len(devices)} available")
    grid = np.array(devices[:need]).reshape(sizes["dp"], sizes["tp"])
    return Mesh(grid, ("dp", "tp"))


def _group_divides(cfg: ModelConfig, tp: int) -> dict[str, bool]:
    return {
        "heads": cfg.num_attention_heads % tp == 0 and cfg.num_key_value_heads % tp == 0,
        "mlp": cfg.intermediate_size % tp == 0,
        "vocab": cfg.vocab_size % tp == 0,
    }


def param_spec(path: tuple[str, ...], ndim: int, cfg: ModelConfig, tp: int) -> P:
    """PartitionSpec for the parameter at `path` with `ndim` dimensions."""
    name = "/".join(str(p) for p in path)
    stacked = is_stacked(path)
    ok = _group_divides(cfg, tp)
    for pattern, spec, group in PARTITION_RULES:
        if re.search(pattern, name):
            if not ok[group]:
                spec = (None,) * len(spec)
            return P(*(((None,) if stacked else ()) + spec))
    return P(*((None,) * ndim))


def cache_spec(cfg: ModelConfig, mesh: Mesh, cache_cls=None) -> P:
    """Spec of a KV cache's key and value arrays, as the cache type says (`KVCache.
    partition_spec`; default the contiguous `[L, B, Hkv, S, D]` cache: batch over dp, KV heads
    over tp when they divide; the paged `[L, P, S, Hkv, D]` cache: pages over KV heads)."""
    from workbench.models.kv_cache import ContiguousKVCache

    return P(*(cache_cls or ContiguousKVCache).partition_spec(cfg, mesh.shape["tp"]))


def describe_fallbacks(cfg: ModelConfig, tp: int) -> list[str]:
    """Human-readable list of groups replicated because they do not divide by tp."""
    return [
        f"{group} not divisible by tp={tp}: replicated"
        for group, ok in _group_divides(cfg, tp).items()
        if not ok
    ]


def named_sharding(mesh: Mesh, spec: P) -> NamedSharding:
    return NamedSharding(mesh, spec)
