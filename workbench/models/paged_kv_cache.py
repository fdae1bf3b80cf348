"""`PagedKVCache`: eSurge's KV cache, a pool of fixed-size pages shared by every sequence.

Layout: keys and values `[L, P, S, Hkv, D]`, P pages of S positions (token-major inside a page,
so a run of pages is one contiguous gather and a token's slot is `page * S + offset`). Which page
holds what is host business (`engines/block_pool.py`); a step hands the cache its layout with
`for_step`: the flat slot of every input token (written after the layer scan), the attention
tiles (`paged_attention.PagedAttentionMeta`) and the kernel that reads the past ("xla" or
"pallas"). The forward pass runs on a flat batch `[1, T]`.

Implements the `KVCache` contract of `kv_cache.py`: `attend` is ragged paged attention over each
sequence's own pages, `write` one scatter of the step's tokens into their slots. Sharded over KV
heads (`partition_spec`): every device holds every page, for its heads.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from workbench.models.kv_cache import KVCache
from workbench.models.paged_attention import PagedAttentionMeta, paged_attention


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagedKVCache(KVCache):
    k: jnp.ndarray  # [L, P, S, Hkv, D]
    v: jnp.ndarray  # [L, P, S, Hkv, D]
    slots: jnp.ndarray | None = None  # [T] i32 flat slot of each input token (P*S: a pad)
    meta: PagedAttentionMeta | None = None
    # how `attend` reads the cached past (`paged_attention.KERNELS`); set per step by `for_step`
    kernel: str = dataclasses.field(default="xla", metadata=dict(static=True))

    @classmethod
    def create(cls, num_layers, num_pages, page_size, num_kv_heads, head_dim, dtype,
               sharding=None) -> "PagedKVCache":
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        if sharding is not None:
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
            return cls(k=zeros(), v=zeros())
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    @staticmethod
    def partition_spec(cfg, tp: int) -> tuple:
        heads = "tp" if cfg.num_key_value_heads % tp == 0 else None
        return (None, None, None, heads, None)  # [L, P, S, Hkv, D]: pages shard over heads

    @staticmethod
    def bytes_per_page(cfg, page_size: int, dtype) -> int:
        """Keys and values of one page over all layers."""
        return (2 * cfg.num_hidden_layers * page_size * cfg.num_key_value_heads * cfg.head_dim
                * jnp.dtype(dtype).itemsize)

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    def for_step(self, slots: jnp.ndarray, meta: PagedAttentionMeta,
                 kernel: str = "xla") -> "PagedKVCache":
        return dataclasses.replace(self, slots=slots, meta=meta, kernel=kernel)

    def attend(self, layer, q, q_pos, fresh, *, backend, sliding_window):
        """q `[1, T, H, D]` (the flat batch), fresh keys/values `[1, Hkv, T, D]`."""
        k_new = fresh[0][0].transpose(1, 0, 2)  # [T, Hkv, D]
        v_new = fresh[1][0].transpose(1, 0, 2)
        out = paged_attention(q[0], k_new, v_new, q_pos[0], self.k, self.v, layer, self.meta,
                              sliding_window=sliding_window, kernel=self.kernel)
        return out[None]

    def write(self, ks, vs, positions):
        """ks/vs `[L, 1, T, Hkv, D]` into the step's slots (pads carry an out-of-range slot)."""
        L, P, S, Hkv, D = self.k.shape

        def put(cache, new):
            flat = cache.reshape(L, P * S, Hkv, D)
            flat = flat.at[:, self.slots].set(new[:, 0].astype(cache.dtype), mode="drop")
            return flat.reshape(L, P, S, Hkv, D)

        return PagedKVCache(k=put(self.k, ks), v=put(self.v, vs))
