"""KV cache contract (`KVCache`) and the contiguous cache; the paged cache is `paged_kv_cache.py`.

A cache is a pytree passed through a forward pass. The contract, declared by `KVCache` and
implemented by both caches, is "attend to the past by position, write the present once":
- before the layer scan, the model calls `cache.plan(positions)` (a cache may prepare its reads);
- inside the scan, attention layer l calls `cache.attend(l, q, q_pos, fresh, ...)`: attention of
  the queries over the cache as it was before this forward pass (every position before the
  chunk's first) plus `fresh`, the current chunk's own keys and values;
- after the scan, the model calls `cache.write(ks, vs, positions)` once with the new keys/values
  of all layers.
So a step never copies or scatters the cache inside the layer loop; the only write is one small
scatter of the new tokens into the donated buffer. Every cache also says how to build and shard
it: `KVCache.partition_spec(cfg, mesh)` and `nbytes`.

Decode can read ragged (`ContiguousKVCache.with_blocks`): the model first calls
`cache.plan(positions)`, which lists, for every row, the blocks of `block_size` cached positions
that row can see (its own length, not the batch's longest); attention layer l then calls
`cache.read_ragged(l)` and gets those blocks gathered as `[P, Hkv, block_size, D]` plus the row each
belongs to. A batch of rows with mixed lengths costs the sum of their lengths, not rows x longest.

Keys and values are head-major, `[..., Hkv, S, D]`: a layer's cache is already in the layout of
the attention dots (see `attention.py`), so reads never transpose it.

Two layouts implement it:
- `ContiguousKVCache` (vInference, vSurge): row b's token at position p lives at `[:, b, :, p]`;
  it also has the slot operations vSurge needs (`with_rows`, `move_rows`) and the read modes of
  `decode_reads.py` (`with_read_len`, `with_blocks`).
- `PagedKVCache` (eSurge): a sequence's token at position p lives in page `page_ids[p // P]` at
  offset `p % P`; attention loops over the pages each sequence holds (`paged_attention.py`).

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

from workbench.models.attention import MASKED_POSITION, attend, ragged_attention


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockPlan:
    """The cached blocks a ragged read gathers: entry p is input row `row[p]`'s positions
    `pos[p]` `[block_size]`; `k_pos[p]` is the same with MASKED_POSITION where the entry is not
    visible (past the row's length, or an unused entry after the last block)."""

    row: jnp.ndarray  # [P] i32 input row of each block
    pos: jnp.ndarray  # [P, block_size] i32 cache positions to gather (clipped into range)
    k_pos: jnp.ndarray  # [P, block_size] i32 key positions for the attention mask


def plan_blocks(lengths: jnp.ndarray, num_blocks: int, block_size: int, max_len: int) -> BlockPlan:
    """Cover the first `lengths[b]` positions of every row with blocks of `block_size`, rows one
    after another, in `num_blocks` entries (static). Entries past the last block are unused.
    The caller guarantees `num_blocks >= sum(ceil(lengths / block_size))` (see
    `blocks_needed`); blocks beyond `num_blocks` would be dropped."""
    nb = (lengths + block_size - 1) // block_size  # [B] blocks per row
    ends = jnp.cumsum(nb)
    p = jnp.arange(num_blocks)
    row = jnp.minimum(jnp.searchsorted(ends, p, side="right"), lengths.shape[0] - 1)
    first = (ends - nb)[row]  # index of the row's first block
    pos = (p - first)[:, None] * block_size + jnp.arange(block_size)[None]  # [P, block]
    visible = (p < ends[-1])[:, None] & (pos < lengths[row][:, None])
    return BlockPlan(row=row.astype(jnp.int32),
                     pos=jnp.minimum(pos, max_len - 1).astype(jnp.int32),
                     k_pos=jnp.where(visible, pos, MASKED_POSITION).astype(jnp.int32))


def blocks_needed(lengths, block_size: int) -> int:
    """Host side of `plan_blocks`: how many blocks rows of these visible lengths need."""
    return sum(-(-int(n) // block_size) for n in lengths if n > 0)


class KVCache(abc.ABC):
    """What the model needs from a cache (see the module docstring). Keys and values arrive as
    `[B, T, Hkv, D]` per layer from the projections, queries as `[B, T, H, D]`."""

    def plan(self, positions: jnp.ndarray) -> "KVCache":
        """Prepare this forward pass's reads for query positions `[B, T]`; a cache that needs
        nothing returns itself."""
        return self

    @abc.abstractmethod
    def attend(self, layer: jnp.ndarray, q: jnp.ndarray, q_pos: jnp.ndarray, fresh: tuple, *,
               backend: str, sliding_window: int | None) -> jnp.ndarray:
        """Attention `[B, T, H, D]` of q `[B, T, H, D]` at positions `[B, T]` (-1 = pad) over the
        cached past of `layer` (positions before each row's first query position) and `fresh`:
        the chunk's keys `[B, Hkv, T, D]`, values `[B, Hkv, T, D]` and key positions `[B, T]`
        (pads at MASKED_POSITION). Causal by position, optionally within `sliding_window`."""

    @abc.abstractmethod
    def write(self, ks: jnp.ndarray, vs: jnp.ndarray, positions: jnp.ndarray) -> "KVCache":
        """Store new keys/values `[L, B, T, Hkv, D]` at positions `[B, T]` (-1 = pad: skipped)."""

    @staticmethod
    @abc.abstractmethod
    def partition_spec(cfg, tp: int) -> tuple:
        """Axis names of the key and value arrays for a mesh with `tp` tensor-parallel devices:
        KV heads over "tp" when they divide by it, else replicated."""

    @property
    def nbytes(self) -> int:
        """Device bytes of the keys and values."""
        return int(self.k.nbytes + self.v.nbytes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ContiguousKVCache(KVCache):
    """One contiguous buffer per row: token at position p of row b is at `[layer, b, :, p]`.

    `read_len` (static) limits how many positions a read returns, so a decode step over short
    sequences in a long cache reads only the prefix it needs.
    """

    k: jnp.ndarray  # [L, B, Hkv, S, D]
    v: jnp.ndarray  # [L, B, Hkv, S, D]
    rows: jnp.ndarray | None = None  # [b] cache row of each input row (None: row i -> row i)
    read_len: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    # Ragged reads: at most `read_blocks` blocks of `block_size` positions per forward pass.
    read_blocks: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    block_size: int = dataclasses.field(default=64, metadata=dict(static=True))
    blocks: BlockPlan | None = None

    @staticmethod
    def partition_spec(cfg, tp: int) -> tuple:
        heads = "tp" if cfg.num_key_value_heads % tp == 0 else None
        return (None, "dp", heads, None, None)  # [L, B, Hkv, S, D]: batch over dp

    def attend(self, layer, q, q_pos, fresh, *, backend, sliding_window):
        if self.blocks is not None:
            # ragged: each row reads only the cached blocks it can see
            return ragged_attention(q, q_pos, self.read_ragged(layer), fresh,
                                    sliding_window=sliding_window)
        ck, cv, c_pos = self.read(layer)
        # The cache holds the past: entries at or after the chunk's first position are stale (or
        # about to be overwritten by this chunk) and stay hidden.
        start = jnp.min(jnp.where(q_pos >= 0, q_pos, MASKED_POSITION), axis=1)
        past = (ck, cv, jnp.where(c_pos < start[:, None], c_pos, MASKED_POSITION))
        return attend(backend, q, [past, fresh], q_pos, sliding_window=sliding_window)

    @classmethod
    def create(cls, num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype, sharding=None):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        if sharding is not None:
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
            return cls(k=zeros(), v=zeros())
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def with_read_len(self, read_len: int | None) -> "ContiguousKVCache":
        if read_len is not None and not 0 < read_len <= self.max_len:
            raise ValueError(f"read_len {read_len} must be in [1, {self.max_len}]")
        return dataclasses.replace(self, read_len=read_len)

    def with_blocks(self, read_blocks: int | None, block_size: int = 64) -> "ContiguousKVCache":
        """Read ragged: each row gathers only the blocks of `block_size` positions it can see,
        `read_blocks` (static) blocks in all; None reads densely again."""
        if read_blocks is not None and (read_blocks < 1 or block_size < 1):
            raise ValueError(f"read_blocks {read_blocks} and block_size {block_size} must be >= 1")
        return dataclasses.replace(self, read_blocks=read_blocks, block_size=block_size,
                                   blocks=None)

    def plan(self, positions):
        if self.read_blocks is None:
            return self
        # The past a chunk may see: positions before its first (see `Attention`); pads see none.
        start = jnp.min(jnp.where(positions >= 0, positions, self.max_len), axis=1)
        lengths = jnp.where(jnp.any(positions >= 0, axis=1), start, 0)
        plan = plan_blocks(lengths, self.read_blocks, self.block_size, self.max_len)
        return dataclasses.replace(self, blocks=plan)

    def read_ragged(self, layer):
        """Ragged read of `layer` (after `plan`): keys and values `[P, Hkv, block_size, D]`, the
        input row of each block `[P]` and key positions `[P, block_size]`."""
        plan = self.blocks
        rows = plan.row if self.rows is None else self.rows[plan.row]
        if self.max_len % self.block_size == 0:
            # Blocks start at multiples of block_size and end inside the cache: each block is
            # one window per head (block_size x D contiguous), copied whole.
            _, _, Hkv, _, D = self.k.shape
            window = (1, 1, Hkv, self.block_size, D)

            def take(x):
                one = lambda r, s: jax.lax.dynamic_slice(x, (layer, r, 0, s, 0), window)[0, 0]
                return jax.vmap(one)(rows, plan.pos[:, 0])

            return take(self.k), take(self.v), plan.row, plan.k_pos
        heads = jnp.arange(self.k.shape[2])[None, :, None]
        keys = self.k[layer][rows[:, None, None], heads, plan.pos[:, None, :]]
        values = self.v[layer][rows[:, None, None], heads, plan.pos[:, None, :]]
        return keys, values, plan.row, plan.k_pos

    def with_rows(self, rows: jnp.ndarray | None) -> "ContiguousKVCache":
        """Map input row i to cache row `rows[i]` (out-of-range rows are dropped on write): a
        prefill of a few requests writes straight into their decode slots."""
        return dataclasses.replace(self, rows=rows)

    def _rows(self, b: int) -> jnp.ndarray:
        return jnp.arange(b) if self.rows is None else self.rows

    def read(self, layer):
        n = self.max_len if self.read_len is None else self.read_len
        keys = jax.lax.dynamic_index_in_dim(self.k, layer, 0, keepdims=False)[:, :, :n]
        values = jax.lax.dynamic_index_in_dim(self.v, layer, 0, keepdims=False)[:, :, :n]
        if self.rows is not None:  # the input rows' own cache rows
            keys = keys.at[self.rows].get(mode="clip")
            values = values.at[self.rows].get(mode="clip")
        k_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (keys.shape[0], n))
        return keys, values, k_pos

    def grown(self, max_len: int) -> "ContiguousKVCache":
        """The same rows with `max_len` positions: zero-padded at the end (or cut, when
        `max_len` is smaller: only for a cache whose entries past `max_len` are unused)."""
        S = self.max_len
        if max_len >= S:
            pad = [(0, 0)] * 3 + [(0, max_len - S), (0, 0)]
            k, v = jnp.pad(self.k, pad), jnp.pad(self.v, pad)
        else:
            k, v = self.k[:, :, :, :max_len], self.v[:, :, :, :max_len]
        return dataclasses.replace(self, k=k, v=v)

    def move_rows(self, src: jnp.ndarray, dst: jnp.ndarray) -> "ContiguousKVCache":
        """Copy rows `src` `[M]` to rows `dst` `[M]`; out-of-range entries in `dst` move nothing."""
        def move(x):
            return x.at[:, dst].set(jnp.take(x, src, axis=1, mode="clip"), mode="drop")

        return dataclasses.replace(self, k=move(self.k), v=move(self.v))

    def write(self, ks, vs, positions):
        b = ks.shape[1]
        idx = jnp.where(positions >= 0, positions, self.max_len)  # [b, T]; pads -> dropped
        rows = self._rows(b)[:, None]  # [b, 1]
        # advanced indices on axes 1 and 3: the indexed slab is [b, T, L, Hkv, D]
        k = self.k.at[:, rows, :, idx].set(ks.transpose(1, 2, 0, 3, 4).astype(self.k.dtype),
                                           mode="drop")
        v = self.v.at[:, rows, :, idx].set(vs.transpose(1, 2, 0, 3, 4).astype(self.v.dtype),
                                           mode="drop")
        return dataclasses.replace(self, k=k, v=v, blocks=None)


def fresh_key_positions(positions: jnp.ndarray) -> jnp.ndarray:
    """Key positions for attending to the current chunk only: pads become invisible."""
    return jnp.where(positions >= 0, positions, MASKED_POSITION).astype(jnp.int32)
