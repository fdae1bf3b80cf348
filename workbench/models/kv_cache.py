"""KV cache contract and the contiguous cache.

A cache is a pytree passed through a forward pass. The contract is "read the past by position,
write the present once":
- inside the layer scan, attention layer l calls `cache.read(l)` and gets every cached key/value
  with its position (the cache as it was before this forward pass);
- after the scan, the model calls `cache.write(ks, vs, positions)` once with the new keys/values
  of all layers.
Attention combines the cached block with the fresh keys of the current chunk (see
`attention.attend`), so a decode step never copies or scatters the cache inside the layer loop;
the only write is one small scatter of the new tokens into the donated buffer.

Both layouts fit:
- `ContiguousKVCache` (vInference, vSurge): row b's token at position p lives at `[:, b, p]`.
- a paged cache (eSurge): row b's token at position p lives in page `page_table[b, p // P]` at
  offset `p % P`; `read` gathers the row's pages back into position order.

Positions are absolute (0 = first real token of the sequence). A position of -1 marks a pad token:
it is never written and never visible. Attention masks come from positions alone (see
`attention.py`): cached entries at or after the first position of the current chunk are hidden, so
slots holding stale data from an earlier request are harmless.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from workbench.models.attention import MASKED_POSITION


class KVCache(abc.ABC):
    """What the model needs from a cache."""

    @abc.abstractmethod
    def read(self, layer: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Keys `[B, S, Hkv, D]`, values `[B, S, Hkv, D]` and key positions `[B, S]` of `layer`."""

    @abc.abstractmethod
    def write(self, ks: jnp.ndarray, vs: jnp.ndarray, positions: jnp.ndarray) -> "KVCache":
        """Store new keys/values `[L, B, T, Hkv, D]` at positions `[B, T]` (-1 = pad: skipped)."""


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

    def _rows(self, b: int) -> jnp.ndarray:
        return jnp.arange(b) if self.rows is None else self.rows

    def read(self, layer):
        n = self.max_len if self.read_len is None else self.read_len
        keys = jax.lax.dynamic_index_in_dim(self.k, layer, 0, keepdims=False)[:, :n]
        values = jax.lax.dynamic_index_in_dim(self.v, layer, 0, keepdims=False)[:, :n]
        if self.rows is not None:  # the input rows' own cache rows
            keys = keys.at[self.rows].get(mode="clip")
            values = values.at[self.rows].get(mode="clip")
        k_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (keys.shape[0], n))
        return keys, values, k_pos

    def move_rows(self, src: jnp.ndarray, dst: jnp.ndarray) -> "ContiguousKVCache":
        """Copy rows `src` `[M]` to rows `dst` `[M]`; out-of-range entries in `dst` move nothing."""
        def move(x):
            return x.at[:, dst].set(jnp.take(x, src, axis=1, mode="clip"), mode="drop")

        return dataclasses.replace(self, k=move(self.k), v=move(self.v))

    def write(self, ks, vs, positions):
        b = ks.shape[1]
        idx = jnp.where(positions >= 0, positions, self.max_len)  # [b, T]; pads -> dropped
        rows = self._rows(b)[:, None]  # [b, 1]
        k = self.k.at[:, rows, idx].set(ks.astype(self.k.dtype), mode="drop")
        v = self.v.at[:, rows, idx].set(vs.astype(self.v.dtype), mode="drop")
        return dataclasses.replace(self, k=k, v=v)


def fresh_key_positions(positions: jnp.ndarray) -> jnp.ndarray:
    """Key positions for attending to the current chunk only: pads become invisible."""
    return jnp.where(positions >= 0, positions, MASKED_POSITION).astype(jnp.int32)
