"""Shape buckets (plain Python)."""

import pytest

from workbench.engines.buckets import fine_buckets, pick_bucket, pow2_buckets


def test_pow2_buckets_end_at_hi():
    assert pow2_buckets(16, 100) == (16, 32, 64, 100)
    assert pow2_buckets(1, 1) == (1,)


def test_fine_buckets_pad_by_at_most_half():
    b = fine_buckets(64, 512)
    assert b == (64, 96, 128, 192, 256, 384, 512)
    for n in range(1, 513):
        assert pick_bucket(n, b) <= max(64, n * 1.5)
    assert fine_buckets(64, 320)[-1] == 320 and fine_buckets(32, 32) == (32,)


def test_pick_bucket_errors_name_the_largest():
    assert pick_bucket(17, (16, 32)) == 32
    with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
        pick_bucket(33, (16, 32))
