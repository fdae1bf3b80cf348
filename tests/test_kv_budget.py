"""KV pages from a budget: a page count, a memory size, or a fraction of free device memory."""

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
    # the CPU keeps no memory statistics: enough for max_num_seqs sequences, at most 1 GiB
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
