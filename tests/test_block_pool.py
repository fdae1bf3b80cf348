"""BlockPool and KVCacheManager: pages, reference counts, hashes, prefix lookups (no JAX)."""

import subprocess
import sys

import pytest

from workbench.engines.block_pool import ROOT_HASH, BlockPool, hash_block
from workbench.engines.kv_cache_manager import KVCacheManager
from workbench.engines.request import Request
from workbench.engines.seq_state import SeqState
from workbench.sampling_params import SamplingParams


def test_free_queue_is_least_recently_freed_and_cached_pages_are_evicted_last():
    pool = BlockPool(4)
    a, b, c = pool.allocate(3)
    assert [x.block_id for x in (a, b, c)] == [0, 1, 2] and pool.num_free == 1
    assert pool.cache(a, b"ha") and pool.cache(b, b"hb")
    assert not pool.cache(c, b"ha")  # a second page with the same hash stays uncached
    pool.free([c, b, a])  # tail first
    assert pool.usage == 0.0 and pool.num_cached == 2
    # page 3 (never used) goes first, then in the order they were freed: c, b, a
    order = [x.block_id for x in pool.allocate(2)]
    assert order == [3, 2]
    assert pool.get_cached(b"hb") is b  # still cached: not reused yet
    assert pool.allocate(1)[0] is b and pool.get_cached(b"hb") is None  # evicted on reuse
    pool.check()


def test_touch_reference_counts_and_double_free():
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    pool.cache(a, b"h")
    pool.free([a])
    assert pool.num_free == 2
    pool.touch([a])  # a prefix hit takes the free cached page out of the free queue
    pool.touch([a])
    assert a.ref_cnt == 2 and pool.num_free == 1
    pool.free([a])
    pool.free([a])
    with pytest.raises(AssertionError, match="freed twice"):
        pool.free([a])
    with pytest.raises(ValueError, match="cannot allocate 3 pages: 2 free"):
        pool.allocate(3)
    with pytest.raises(ValueError, match="num_pages"):
        BlockPool(0)
    pool.check()


def test_hashes_are_chained_stable_and_reset_forgets_them():
    h1 = hash_block(ROOT_HASH, [1, 2, 3])
    assert h1 == hash_block(b"", [1, 2, 3]) and h1 != hash_block(ROOT_HASH, [1, 2, 4])
    assert hash_block(h1, [4]) != hash_block(ROOT_HASH, [4])
    # the same in another process (hashlib, not hash())
    code = ("from workbench.engines.block_pool import hash_block; "
            "print(hash_block(b'', [1, 2, 3]).hex())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert other == h1.hex()
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    pool.cache(a, h1)
    pool.free([b])
    pool.cache(pool.allocate(1)[0], b"x")
    assert pool.reset_prefix_cache() == 2 and pool.num_cached == 0 and a.ref_cnt == 1
    pool.check()


def _seq(rid, prompt, max_tokens=4):
    req = Request(rid, None, list(prompt), SamplingParams(max_tokens=max_tokens), None,
                  frozenset())
    return SeqState(req, req.sequences[0], arrival=0)


def test_prefix_lookup_never_returns_the_whole_prompt_and_counts_tokens():
    kv = KVCacheManager(num_pages=10, page_size=4)
    first = _seq("a", range(1, 13))  # 12 tokens: 3 full blocks
    assert kv.get_computed_blocks(first) == ([], 0)
    assert kv.allocate_slots(first, 12) is not None
    assert kv.pool.num_cached == 0  # not in the step that computes them (it writes them last)
    first.num_computed_tokens = 12  # that step was dispatched
    assert kv.allocate_slots(first, 1) is not None
    assert kv.pool.num_cached == 3
    same = _seq("b", range(1, 13))
    blocks, hit = kv.get_computed_blocks(same)
    assert hit == 8 and blocks == kv.blocks(first)[:2]  # the last token is recomputed
    assert kv.record_lookup(same, hit) == (12, 8)
    longer = _seq("c", list(range(1, 13)) + [50, 51])
    blocks, hit = kv.get_computed_blocks(longer)
    assert hit == 12
    assert kv.allocate_slots(longer, 2, blocks, hit) is not None
    assert [b.ref_cnt for b in kv.blocks(first)] == [2, 2, 2, 1]
    assert len(kv.blocks(longer)) == 4 and kv.blocks(longer)[3].ref_cnt == 1
    kv.free(first)
    kv.free(longer)
    assert kv.pool.usage == 0 and kv.pool.num_cached == 3
    # a resumed sequence finds its blocks but its lookup is not counted (vLLM issue 25780)
    again = _seq("a2", range(1, 13))
    again.num_preemptions = 1
    assert kv.record_lookup(again, 8) == (0, 0)
    assert (kv.num_queries, kv.num_hits) == (12, 8)
    kv.pool.check()


def test_allocation_fails_cleanly_when_pages_run_out_and_caching_can_be_off():
    kv = KVCacheManager(num_pages=3, page_size=4)
    s = _seq("a", range(10))
    assert kv.allocate_slots(s, 10) is not None and kv.pool.num_free == 0
    s.num_computed_tokens = 10
    t = _seq("b", range(4))
    assert kv.allocate_slots(t, 4) is None and kv.blocks(t) == [] and kv.num_held == 1
    # cached pages that a hit would take out of the free queue count against the free pages
    kv.free(s)  # caches the full blocks it computed
    assert kv.pool.num_cached == 2
    u = _seq("c", list(range(8)) + [99])
    blocks, hit = kv.get_computed_blocks(u)
    assert hit == 8
    assert kv.allocate_slots(u, 1 + 8, blocks, hit) is None  # 2 hits + 3 new > 3 pages
    assert kv.allocate_slots(u, 1, blocks, hit) is not None and kv.pool.num_free == 0
    off = KVCacheManager(num_pages=3, page_size=4, enable_prefix_caching=False)
    v = _seq("d", range(8))
    off.allocate_slots(v, 8)
    v.num_computed_tokens = 8
    off.free(v)
    assert off.pool.num_cached == 0 and off.get_computed_blocks(_seq("e", range(9))) == ([], 0)
    assert off.record_lookup(v, 0) == (0, 0)
    with pytest.raises(ValueError, match="page_size"):
        KVCacheManager(num_pages=3, page_size=0)
