"""How a decode step reads the KV cache, and how much: plain Python on the host.

Decode attention costs time per cached position read, so each dispatch reads only what its rows
can see. The host knows (an upper bound of) every live row's visible length and picks a static
read size from a few buckets, so jit compiles only a few shapes:

- "ragged" (the default with the "xla" attention backend): every row gathers only its own
  blocks of `block_size` positions (`ContiguousKVCache.with_blocks`); the static size is the
  number of blocks in all, rounded up to `block_buckets`. A batch of mixed lengths costs the sum
  of its lengths, and finished rows read nothing.
- "prefix": every row reads the same prefix, up to the longest row's length rounded up to
  `read_buckets` (`ContiguousKVCache.with_read_len`). A batch costs rows x longest.

On a 2-core CPU, batch 32 with lengths spread over 32..512: the layers' attention takes ~80-95 ms
ragged against ~160 ms for the 512-position prefix (`benchmarks/README.md`).
"""

from __future__ import annotations

from typing import Sequence

from workbench.engines.buckets import fine_buckets, pick_bucket
from workbench.models.kv_cache import ContiguousKVCache, blocks_needed

DECODE_READS = ("ragged", "prefix")


def default_decode_read(attention_backend: str) -> str:
    """Ragged reads with the plain-XLA attention; with another backend (e.g. cuDNN's
    `dot_product_attention` on GPU) decode keeps that backend, over a common prefix."""
    return "ragged" if attention_backend == "xla" else "prefix"


class DecodeReads:
    """One engine's read policy: `apply(cache, lengths, rows)` before each decode dispatch,
    `reset(cache)` after it; `sizes(rows, cache_len)` lists the shapes it can compile."""

    def __init__(self, mode: str | None = None, *, max_model_len: int,
                 attention_backend: str = "xla", block_size: int = 64,
                 read_buckets: Sequence[int] | None = None,
                 block_buckets: Sequence[int] | None = None):
        mode = mode or default_decode_read(attention_backend)
        if mode not in DECODE_READS:
            raise ValueError(f"decode_read must be one of {DECODE_READS}, got {mode!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.mode = mode
        self.block_size = block_size
        # prefix lengths: powers of two and 1.5x midpoints (a length is padded by at most 1.5x)
        self.read_buckets = tuple(sorted(read_buckets or fine_buckets(
            min(64, max_model_len), max_model_len)))
        self.block_buckets = tuple(sorted(block_buckets)) if block_buckets else None

    def sizes(self, rows: int, cache_len: int) -> list[int]:
        """Every static read size a dispatch over `rows` rows of a `cache_len` cache may pick:
        prefix lengths, or numbers of blocks (the last one covers every position of every row)."""
        if self.mode == "prefix":
            return [b for b in self.read_buckets if b < cache_len] + [cache_len]
        most = rows * -(-cache_len // self.block_size)
        # powers of two and 1.5x midpoints from half a block per row: a live row holds at least
        # one block, and a dispatch's rows are at least half live (vSurge compacts otherwise)
        buckets = self.block_buckets or fine_buckets(min(max(rows // 2, 1), most), most)
        return [b for b in buckets if b < most] + [most]

    def size_for(self, lengths: Sequence[int], rows: int, cache_len: int) -> int:
        """The read size for live rows that see (at most) `lengths` cached positions each."""
        lengths = [min(int(n), cache_len) for n in lengths]
        if self.mode == "prefix":
            need = max(lengths, default=1)
        else:
            need = max(blocks_needed(lengths, self.block_size), 1)
        return pick_bucket(need, self.sizes(rows, cache_len))

    def with_size(self, cache: ContiguousKVCache, size: int) -> ContiguousKVCache:
        if self.mode == "prefix":
            return cache.with_read_len(size)
        return cache.with_blocks(size, self.block_size)

    def apply(self, cache: ContiguousKVCache, lengths: Sequence[int], rows: int
              ) -> ContiguousKVCache:
        """`cache` set to read what live rows seeing (at most) `lengths` cached positions each
        need, in a dispatch over `rows` rows."""
        return self.with_size(cache, self.size_for(lengths, rows, cache.max_len))

    @staticmethod
    def reset(cache: ContiguousKVCache) -> ContiguousKVCache:
        """Back to the dense whole-cache default (between dispatches)."""
        return cache.with_read_len(None).with_blocks(None)
