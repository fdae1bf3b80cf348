"""`KVCacheManager`: which pages each sequence holds, and the prefix cache on top of the
`BlockPool`. Plain Python, no JAX.

- `get_computed_blocks(seq)`: the longest prefix of the sequence's full blocks that is cached,
  never the whole sequence: its last token is always computed, so that its logits exist.
- `allocate_slots(seq, num_new_tokens, computed, num_computed)`: pages for the next chunk (and
  the cached prefix found above, taken on the first call); None when pages run out, and then
  nothing changed.
- `free(seq)`: the sequence's pages back to the pool, tail first (so its tail is evicted first).

When a block is cached: once the step that computes its KV has been dispatched, and not in that
step. A step writes its KV after the layer scan, so a sequence scheduled in the same step cannot
read it; any later step runs after it on the device. So `allocate_slots` (and `free`) cache the
full blocks of the tokens computed before the step being planned (`seq.num_computed_tokens`,
which the scheduler advances when it hands a plan over).
- `record_lookup(seq, hits)`: prefix-cache queries and hits, in tokens, counted for new sequences
  only: a sequence resumed after a preemption finds its own blocks again, and counting those as
  hits would inflate the hit rate (vLLM issue 25780).
"""

from __future__ import annotations

from workbench.engines.block_pool import Block, BlockPool
from workbench.engines.seq_state import SeqState


class KVCacheManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
        self.pool = BlockPool(num_pages)
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks: dict[str, list[Block]] = {}
        self._num_cached: dict[str, int] = {}  # leading blocks of a sequence registered
        self.num_queries = 0  # prompt tokens looked up (new sequences only)
        self.num_hits = 0  # of those, tokens found cached

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def blocks(self, seq: SeqState) -> list[Block]:
        return self._blocks.get(seq.request_id, [])

    def page_ids(self, seq: SeqState) -> list[int]:
        return [b.block_id for b in self._blocks.get(seq.request_id, ())]

    def get_computed_blocks(self, seq: SeqState) -> tuple[list[Block], int]:
        """(cached pages of the longest cached prefix, its length in tokens)."""
        if not self.enable_prefix_caching:
            return [], 0
        hashes = seq.update_hashes(self.page_size)
        most = (seq.num_tokens - 1) // self.page_size  # the last token is always computed
        out = []
        for h in hashes[:most]:
            block = self.pool.get_cached(h)
            if block is None:
                break
            out.append(block)
        return out, len(out) * self.page_size

    def record_lookup(self, seq: SeqState, num_hit_tokens: int) -> tuple[int, int]:
        """Count a lookup of a sequence's first admission; returns (queries, hits) added."""
        if seq.resumed or not self.enable_prefix_caching:
            return 0, 0
        self.num_queries += seq.num_tokens
        self.num_hits += num_hit_tokens
        return seq.num_tokens, num_hit_tokens

    def allocate_slots(self, seq: SeqState, num_new_tokens: int, computed: list[Block] = (),
                       num_computed: int = 0) -> list[Block] | None:
        """Pages so that the sequence holds `num_computed_tokens + num_computed + num_new_tokens`
        positions; returns the newly allocated pages, or None (nothing changed) when too few
        are free."""
        held = self._blocks.get(seq.request_id, [])
        total = seq.num_computed_tokens + num_computed + num_new_tokens
        need = max(self.pages_for(total) - len(held) - len(computed), 0)
        # cached pages nobody holds sit in the free queue: taking them leaves fewer free
        taken_from_free = sum(1 for b in computed if b.ref_cnt == 0)
        if need > self.pool.num_free - taken_from_free:
            return None
        held = self._blocks.setdefault(seq.request_id, held)
        if computed:
            self.pool.touch(computed)
            held.extend(computed)
            self._num_cached[seq.request_id] = max(self._num_cached.get(seq.request_id, 0),
                                                   len(held))
        new = self.pool.allocate(need)
        held.extend(new)
        self.cache_blocks(seq, seq.num_computed_tokens + num_computed)
        return new

    def cache_blocks(self, seq: SeqState, num_tokens: int) -> None:
        """Cache the sequence's full blocks among its first `num_tokens` computed tokens (those
        whose ids the host knows)."""
        if not self.enable_prefix_caching:
            return
        held = self._blocks.get(seq.request_id, [])
        num_tokens = min(num_tokens, seq.num_known_tokens)
        full = min(num_tokens // self.page_size, len(held))
        start = self._num_cached.get(seq.request_id, 0)
        if full <= start:
            return
        hashes = seq.update_hashes(self.page_size)
        for i in range(start, full):
            if held[i].block_hash is None:
                self.pool.cache(held[i], hashes[i])  # False: another page has it; stays uncached
        self._num_cached[seq.request_id] = full

    def free(self, seq: SeqState) -> None:
        """Cache what its dispatched steps computed, then release its pages."""
        self.cache_blocks(seq, seq.num_computed_tokens)
        held = self._blocks.pop(seq.request_id, [])
        self._num_cached.pop(seq.request_id, None)
        self.pool.free(reversed(held))

    def reset_prefix_cache(self) -> int:
        return self.pool.reset_prefix_cache()

    def owners(self) -> dict[int, list[str]]:
        """page id -> ids of the sequences holding it."""
        out: dict[int, list[str]] = {}
        for rid, blocks in self._blocks.items():
            for b in blocks:
                out.setdefault(b.block_id, []).append(rid)
        return out

    @property
    def num_held(self) -> int:
        return len(self._blocks)
