"""`BlockPool`: eSurge's fixed set of KV pages, their reference counts, and the prefix cache's map
from block hashes to pages. Plain Python, no JAX.

A page ("block") holds `page_size` consecutive token positions of a sequence. Its life:

    free (in the free queue) -> allocated (ref_cnt >= 1, owned by sequences) -> freed (ref_cnt 0,
    back at the END of the free queue) -> reused from the FRONT of the queue

so the free queue is in least-recently-freed order. A full block of a sequence is cached: its
hash, computed from the parent block's hash and the block's token ids, maps to the page. A cached
page keeps its hash while free; it is evicted (its hash forgotten) only when it is reused for new
tokens, so the longest-unused cached prefixes go first. A sequence whose prefix hashes to cached
pages takes those pages (`touch`: ref_cnt + 1, out of the free queue) instead of recomputing them.

Hashes use hashlib (sha256 of the parent hash and the token ids as little-endian int32), never
Python's `hash()`, so they are the same in every process.

Invariants (`check()`, used by the property tests): every page is either in the free queue with
ref_cnt 0 or out of it with ref_cnt >= 1; the map holds exactly the pages with a hash, under that
hash.
"""

from __future__ import annotations

import collections
import hashlib
import struct
from typing import Iterable, Sequence

ROOT_HASH = b""  # the parent hash of a sequence's first block


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """The hash of a full block: sha256(parent hash || token ids as little-endian int32)."""
    h = hashlib.sha256(parent_hash)
    h.update(struct.pack(f"<{len(token_ids)}i", *token_ids))
    return h.digest()


class Block:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None

    def __repr__(self) -> str:
        h = self.block_hash.hex()[:8] if self.block_hash else None
        return f"Block({self.block_id}, ref={self.ref_cnt}, hash={h})"


class BlockPool:
    """`num_pages` pages; see the module docstring."""

    def __init__(self, num_pages: int):
        if not isinstance(num_pages, int) or num_pages < 1:
            raise ValueError(f"num_pages must be an int >= 1, got {num_pages!r}")
        self.num_pages = num_pages
        self.blocks = [Block(i) for i in range(num_pages)]
        self._free: collections.OrderedDict[int, Block] = collections.OrderedDict(
            (b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, Block] = {}

    @property
    def num_free(self) -> int:
        """Pages that can be allocated (free, cached or not)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of pages in use by sequences (cached free pages count as free)."""
        return 1.0 - len(self._free) / self.num_pages

    def allocate(self, n: int) -> list[Block]:
        """`n` pages from the front of the free queue (evicting their cached hashes), each with
        ref_cnt 1. ValueError when fewer are free: callers check `num_free` first."""
        if n > len(self._free):
            raise ValueError(f"cannot allocate {n} pages: {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:  # evict: the page gets new contents
                del self._cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def get_cached(self, block_hash: bytes) -> Block | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference to cached pages (a prefix hit); free ones leave the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop one reference per page; pages nobody uses go to the end of the free queue, in
        the given order (pass a sequence's pages tail first, so its tail is evicted first)."""
        for block in blocks:
            assert block.ref_cnt > 0, f"{block} freed twice"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def cache(self, block: Block, block_hash: bytes) -> bool:
        """Register a full, computed page under `block_hash`. False (and the page stays
        uncached) when another page already holds that hash."""
        assert block.ref_cnt > 0 and block.block_hash is None, f"cannot cache {block}"
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every cached hash (pages in use keep their contents and owners); returns how
        many pages were uncached. Later requests recompute what they would have reused."""
        n = len(self._cached)
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        return n

    def check(self) -> None:
        """Assert the invariants in the module docstring."""
        for block in self.blocks:
            assert block.ref_cnt >= 0, f"{block} has a negative reference count"
            assert (block.ref_cnt == 0) == (block.block_id in self._free), \
                f"{block} in the free queue: {block.block_id in self._free}"
            if block.block_hash is not None:
                assert self._cached.get(block.block_hash) is block, f"{block} not in the map"
        assert len(self._cached) == sum(b.block_hash is not None for b in self.blocks)
