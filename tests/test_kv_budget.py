"""KV pages from a budget: a page count, a memory size, or a fraction of free device memory."""

import numpy as np
import pytest

from workbench.engines import kv_budget
from workbench.engines.kv_budget import num_pages_for, parse_bytes

KW = dict(bytes_per_page=1000, page_size=16, max_model_len=160, max_num_seqs=4)


def test_sizes_parse():
    assert parse_bytes(1234) == 1234
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes(" 1.5 kib") == 1536
    for bad in ("", "lots", "3 parsecs", -1, 0, True, 2.5):
        with pytest.raises(ValueError, match="kv_cache_memory"):
            parse_bytes(bad)


def test_each_budget_kind(monkeypatch):
    assert num_pages_for(**KW, num_pages=50) == 50
    assert num_pages_for(**KW, kv_cache_memory="64KB") == 64
    # the CPU keeps no memory statistics: enough for max_num_seqs sequences, at most 512 MiB
    monkeypatch.setattr(kv_budget, "free_device_bytes", lambda device=None: None)
    assert num_pages_for(**KW) == 4 * 10
    with pytest.raises(ValueError, match="needs a GPU or TPU"):
        num_pages_for(**KW, kv_cache_fraction=0.5)
    # an accelerator: a fraction of what is free (default 0.8)
    monkeypatch.setattr(kv_budget, "free_device_bytes", lambda device=None: 100_000)
    assert num_pages_for(**KW, kv_cache_fraction=0.5) == 50
    assert num_pages_for(**KW) == 80
    for bad in (0, 1.5, "half"):
        with pytest.raises(ValueError, match="kv_cache_fraction"):
            num_pages_for(**KW, kv_cache_fraction=bad)


def test_a_pool_must_hold_one_longest_sequence():
    with pytest.raises(ValueError, match="holds 9 pages .* needs 10"):
        num_pages_for(**KW, num_pages=9)
    with pytest.raises(ValueError, match="at most one of"):
        num_pages_for(**KW, num_pages=20, kv_cache_memory=10**6)
    with pytest.raises(ValueError, match="num_pages must be an int"):
        num_pages_for(**KW, num_pages=12.0)


def test_free_device_bytes_reads_memory_stats():
    class Device:
        def __init__(self, stats):
            self._stats = stats

        def memory_stats(self):
            return self._stats

    assert kv_budget.free_device_bytes(Device({"bytes_limit": 100, "bytes_in_use": 30})) == 70
    assert kv_budget.free_device_bytes(Device(None)) is None


def test_kv_budget_bytes_and_the_contiguous_engines_fit_it(monkeypatch):
    from tests.reliability_support import build, tiny_lm
    from workbench.engines.kv_budget import (
        DEFAULT_CPU_BYTES,
        kv_budget_bytes,
        kv_bytes_per_token,
    )
    from workbench.sampling_params import SamplingParams

    assert kv_budget_bytes("1MiB") == 1 << 20
    monkeypatch.setattr(kv_budget, "free_device_bytes", lambda device=None: None)
    assert kv_budget_bytes() == DEFAULT_CPU_BYTES == 512 << 20
    lm = tiny_lm()
    per_token = kv_bytes_per_token(lm.config, lm.dtype)  # 2 layers x 2 heads x 8 x 2 x 4 bytes
    assert per_token == 2 * 2 * 2 * 8 * 4
    # vSurge: as many of the asked slots as fit the budget
    eng = build("vsurge", kv_cache_memory=3 * 64 * per_token)
    assert eng.max_concurrent_decodes == 3
    eng.start()
    assert eng.kv_cache_bytes() == 3 * 64 * per_token
    eng.close()
    with pytest.raises(ValueError, match="holds no slot of max_model_len 64"):
        build("vsurge", kv_cache_memory=64 * per_token - 1)
    # vInference: batches cut so that each one's cache fits (4 rows x a 64-token bucket = 2 rows)
    eng = build("vinference", kv_cache_memory=2 * 64 * per_token, cache_buckets=(64,))
    sizes = []
    run_batch = eng._run_batch
    eng._run_batch = lambda rows: (sizes.append(len(rows)), (yield from run_batch(rows)))[1]
    outs = eng.generate(["a", "b", "c", "d", "e"], SamplingParams(max_tokens=2, temperature=0))
    assert sizes == [2, 2, 1] and all(o.finished for o in outs)


def test_a_pool_given_by_count_or_size_must_fit_the_memory_there_is(monkeypatch):
    """num_pages=10**9 used to be allocated as asked, running the machine out of memory."""
    monkeypatch.setattr(kv_budget, "free_device_bytes", lambda device=None: 100_000)  # a GPU
    assert num_pages_for(**KW, num_pages=100) == 100  # exactly the free memory fits
    with pytest.raises(ValueError, match=r"^num_pages=101 is a KV cache of 98\.6 KiB, more than "
                                         r"the free device memory \(97\.7 KiB\)"):
        num_pages_for(**KW, num_pages=101)
    with pytest.raises(ValueError, match=r"^kv_cache_memory='1MB' is a KV cache of .* more than "
                                         "the free device memory"):
        num_pages_for(**KW, kv_cache_memory="1MB")
    # a pool split over 2 devices (tensor parallel over KV heads) needs half of it on each
    assert num_pages_for(**KW, num_pages=200, shards=2) == 200
    with pytest.raises(ValueError, match=r"^num_pages=202 is a KV cache of 197\.3 KiB \(98\.6 KiB "
                                         r"per device over 2\), more than the free device"):
        num_pages_for(**KW, num_pages=202, shards=2)
    assert num_pages_for(**KW, num_pages=np.int64(64)) == 64  # numpy ints are ints
    monkeypatch.setattr(kv_budget, "free_device_bytes", lambda device=None: None)  # the CPU
    ram, what, per_device = kv_budget.memory_limit()
    assert what == "this machine's memory" and ram > 2**30 and not per_device
    with pytest.raises(ValueError, match=r"^num_pages=1000000000 is a KV cache of "
                                         r"931\.3 GiB, more than this machine's memory"):
        num_pages_for(**KW, num_pages=10**9)
    with pytest.raises(ValueError, match="^kv_cache_memory='1000TB' is a KV cache"):
        num_pages_for(**KW, kv_cache_memory="1000TB")
