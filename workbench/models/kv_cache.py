"""KV cache contract and the contiguous cache.

A cache is a pytree that the model threads through its layers (a `lax.scan` carry). Each attention
layer calls `cache.update(layer, k, v, positions)` once: the new keys/values are written at their
token positions and the layer gets back every key/value it may attend to, with their positions.

The contract is "write, then read by position", which fits both layouts:
- `ContiguousKVCache` (vInference, vSurge): row b's token at position p lives at `[:, b, p]`.
- a paged cache (eSurge): row b's token at position p lives in page `page_table[b, p // P]` at
  offset `p % P`; reading gathers the row's pages back into position order.

Positions are absolute (0 = first real token of the sequence). A position of -1 marks a pad token:
it is never written and never visible. Attention masks come from positions alone (see
`attention.py`), so a slot that holds stale data from an earlier request is harmless: it sits at a
position above every live query until it is overwritten.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from workbench.models.attention import MASKED_POSITION


class KVCache(abc.ABC):
    """What an attention layer needs from a cache."""

    @abc.abstractmethod
    def update(
        self, layer: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, positions: jnp.ndarray
    ) -> tuple["KVCache", jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Write k, v `[B, T, Hkv, D]` at positions `[B, T]` (-1 = pad: skipped) into `layer`.

        Returns (new cache, keys `[B, S, Hkv, D]`, values `[B, S, Hkv, D]`, key positions `[B, S]`).
        """


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ContiguousKVCache(KVCache):
    """One contiguous buffer per row: token at position p of row b is at `[layer, b, p]`.

    `read_len` (static) limits how many positions a read returns, so a decode step over short
    sequences in a long cache reads only the prefix it needs.
    """

    k: jnp.ndarray  # [L, B, S, Hkv, D]
    v: jnp.ndarray  # [L, B, S, Hkv, D]
    rows: jnp.ndarray | None = None  # [b] cache row of each input row (None: row i -> row i)
    read_len: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @classmethod
    def create(cls, num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype, sharding=None):
        shape = (num_layers, batch_size, max_len, num_kv_heads, head_dim)
        if sharding is not None:
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
            return cls(k=zeros(), v=zeros())
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def with_read_len(self, read_len: int | None) -> "ContiguousKVCache":
        if read_len is not None and not 0 < read_len <= self.max_len:
            raise ValueError(f"read_len {read_len} must be in [1, {self.max_len}]")
        return dataclasses.replace(self, read_len=read_len)

    def with_rows(self, rows: jnp.ndarray | None) -> "ContiguousKVCache":
        """Map input row i to cache row `rows[i]` (out-of-range rows are dropped on write): a
        prefill of a few requests writes straight into their decode slots."""
        return dataclasses.replace(self, rows=rows)

    def update(self, layer, k, v, positions):
        b, S = k.shape[0], self.max_len
        idx = jnp.where(positions >= 0, positions, S)  # [b, T]; pads go out of range -> dropped
        rows = (jnp.arange(b) if self.rows is None else self.rows)[:, None]  # [b, 1]
        new_k = self.k.at[layer, rows, idx].set(k.astype(self.k.dtype), mode="drop")
        new_v = self.v.at[layer, rows, idx].set(v.astype(self.v.dtype), mode="drop")
        n = S if self.read_len is None else self.read_len
        keys = jax.lax.dynamic_index_in_dim(new_k, layer, 0, keepdims=False)[:, :n]
        values = jax.lax.dynamic_index_in_dim(new_v, layer, 0, keepdims=False)[:, :n]
        if self.rows is not None:  # the input rows' own cache rows
            keys = keys.at[self.rows].get(mode="clip")
            values = values.at[self.rows].get(mode="clip")
        k_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (keys.shape[0], n))
        return dataclasses.replace(self, k=new_k, v=new_v), keys, values, k_pos


def fresh_key_positions(positions: jnp.ndarray) -> jnp.ndarray:
    """Key positions for attending to the current chunk only: pads become invisible."""
    return jnp.where(positions >= 0, positions, MASKED_POSITION).astype(jnp.int32)
