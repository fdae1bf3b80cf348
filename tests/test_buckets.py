"""Shape buckets (plain Python)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.engines.buckets import (MAX_ROWS, check_count, check_rows, fine_buckets,
                                       pick_bucket, pow2_buckets)
from workbench.engines.catalog import engine_class


def test_pow2_buckets_end_at_hi():
    assert pow2_buckets(16, 100) == (16, 32, 64, 100)
    assert pow2_buckets(1, 1) == (1,)


def test_fine_buckets_pad_by_at_most_half():
    b = fine_buckets(64, 512)
    assert b == (64, 96, 128, 192, 256, 384, 512)
    for n in range(1, 513):
        assert pick_bucket(n, b) <= max(64, n * 1.5)
    assert fine_buckets(64, 320)[-1] == 320 and fine_buckets(32, 32) == (32,)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=5),
                       st.none(), st.integers(-10, MAX_ROWS + 10).map(np.int64)))
def test_check_rows_takes_exactly_the_integers_from_1_to_max_rows(value):
    ok = (not isinstance(value, bool) and isinstance(value, (int, np.integer))
          and 1 <= value <= MAX_ROWS)
    if ok:
        assert check_rows("max_num_seqs", value) == value
        assert type(check_rows("max_num_seqs", value)) is int
    else:
        with pytest.raises(ValueError, match=rf"^max_num_seqs must be an integer in \[1, "
                                             rf"{MAX_ROWS}\], got "):
            check_rows("max_num_seqs", value)


@pytest.mark.parametrize("kind, knob", [("vinference", "max_batch_size"),
                                        ("vsurge", "max_concurrent_decodes"),
                                        ("vsurge", "max_concurrent_prefill"),
                                        ("esurge", "max_num_seqs")])
def test_every_engine_bounds_its_rows_before_sizing_anything(tiny_random_lm, kind, knob):
    """A row count sizes lists and [rows, vocab] arrays: 10**25 was an OverflowError inside
    eSurge's scheduler, and 10**6 a multi-GB row state on a real vocabulary."""
    cls = engine_class(kind)
    for bad in (0, MAX_ROWS + 1, 10**6, 10**25, True, 4.0):
        with pytest.raises(ValueError, match=rf"{knob} must be an integer in \[1, {MAX_ROWS}\]"):
            cls(tiny_random_lm, max_model_len=64, **{knob: bad})
    eng = cls(tiny_random_lm, max_model_len=64, **{knob: MAX_ROWS})  # the ceiling itself is fine
    eng.close()


def test_check_count_names_its_bound():
    assert check_count("decode_steps", 64, 64, "max_model_len") == 64
    with pytest.raises(ValueError, match=r"^decode_steps must be an integer in \[1, "
                                         r"max_model_len=64\], got 65$"):
        check_count("decode_steps", 65, 64, "max_model_len")


@pytest.mark.parametrize("kind, knob", [("vinference", "streaming_chunk"),
                                        ("vsurge", "decode_steps")])
def test_decode_chunks_are_at_most_max_model_len(tiny_random_lm, kind, knob):
    """Steps per device loop size its [rows, steps] outputs: streaming_chunk=10**9 used to
    allocate them (and never return)."""
    cls = engine_class(kind)
    for bad in (0, 65, 10**9, True, "4"):
        with pytest.raises(ValueError, match=rf"{knob} must be an integer in \[1, "
                                             rf"max_model_len=64\]"):
            cls(tiny_random_lm, max_model_len=64, **{knob: bad})
    eng = cls(tiny_random_lm, max_model_len=64, **{knob: 64})
    eng.close()
    short = cls(tiny_random_lm, max_model_len=8)  # a default above a short context is capped
    assert getattr(short, knob) <= 8
    short.close()


def test_pick_bucket_errors_name_the_largest():
    assert pick_bucket(17, (16, 32)) == 32
    with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
        pick_bucket(33, (16, 32))


def test_decode_reads_pick_the_smallest_size_that_covers_every_live_row():
    from workbench.engines.decode_reads import DecodeReads
    from workbench.models.kv_cache import blocks_needed

    ragged = DecodeReads(max_model_len=512)
    assert ragged.sizes(32, 512) == [16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert ragged.sizes(1, 512) == [1, 2, 3, 4, 6, 8]  # the last covers the whole cache
    assert blocks_needed([0, 1, 64, 65, 500], 64) == 0 + 1 + 1 + 2 + 8
    assert ragged.size_for([41] * 32, 32, 256) == 32  # one block per row
    assert ragged.size_for([168] * 32, 32, 256) == 96  # three blocks per row
    assert ragged.size_for([500, 20], 2, 512) == 12  # 8 + 1 blocks: not 2 rows x longest
    assert ragged.size_for([9000], 1, 512) == 8  # lengths are capped by the cache
    prefix = DecodeReads("prefix", max_model_len=512)
    assert prefix.sizes(32, 256) == [64, 96, 128, 192, 256]
    assert prefix.size_for([100, 20], 2, 256) == 128  # the longest row decides
    from workbench.engines.decode_reads import default_decode_read

    assert default_decode_read("xla") == "ragged"
    assert default_decode_read("dot_product_attention") == "prefix"  # keeps the chosen kernel
    assert DecodeReads(max_model_len=64, attention_backend="dot_product_attention").mode == "prefix"
    assert DecodeReads(max_model_len=64).mode == "ragged"
    with pytest.raises(ValueError, match="decode_read must be one of"):
        DecodeReads("paged", max_model_len=64)
    with pytest.raises(ValueError, match="block_size"):
        DecodeReads(max_model_len=64, block_size=0)


def test_engines_pad_prompts_by_at_most_half_by_default(tiny_llama):
    """Both engines' default prompt buckets are `prompt_buckets`: a prompt longer than the smallest
    bucket is padded by at most 1.5x (a 40-token prompt prefills at 48, not 64)."""
    from workbench.engines.vinference import vInference
    from workbench.engines.vsurge import vSurge

    vi = vInference(tiny_llama, max_model_len=256)
    vs = vSurge(tiny_llama, max_concurrent_decodes=2, max_model_len=256)
    try:
        for buckets, top in [(vi.prefill_buckets, vi.max_model_len),
                             (vs.prefill_buckets, vs.max_prefill_length)]:
            assert buckets[0] == 16 and buckets[-1] == top
            assert pick_bucket(40, buckets) == 48
            for n in range(17, top + 1):
                assert pick_bucket(n, buckets) <= n * 1.5
    finally:
        vi.close()
        vs.close()
