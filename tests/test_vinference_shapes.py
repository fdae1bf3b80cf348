"""vInference's shape bound and precompile(): the bound counts exactly the prefill shapes
requests can reach, precompile() returns what it dispatched, and what it covered compiles
nothing new afterwards."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.engines.buckets import fine_buckets, pick_bucket, pow2_buckets
from workbench.engines.vinference_shapes import shape_bound
from workbench.sampling_params import SamplingParams


@settings(max_examples=40, deadline=None, derandomize=True)
@given(max_len=st.integers(20, 700), max_batch=st.integers(1, 40))
def test_prefill_bound_is_exactly_the_reachable_shapes(max_len, max_batch):
    batch_b = pow2_buckets(1, max_batch)
    prompt_b = fine_buckets(min(16, max_len), max_len)
    cache_b = pow2_buckets(min(128, max_len), max_len)
    reachable = set()
    for n in range(1, max_len):  # a prompt of n tokens asking for 1..max_len-n new ones
        T = pick_bucket(n, prompt_b)
        for total in range(n + 1, max_len + 1):
            reachable.add((T, pick_bucket(total, cache_b)))
    bound = shape_bound(batch_b, prompt_b, cache_b, lambda b, s: [1])
    assert bound["prefill"] == len(batch_b) * len(reachable)
    assert bound["decode"] == len(batch_b) * len(cache_b)


@pytest.fixture(scope="module")
def engine(tiny_random_lm):
    from workbench.engines.vinference import vInference

    with vInference(tiny_random_lm, max_batch_size=4, max_model_len=128) as e:
        yield e


def test_precompile_returns_what_it_compiled_and_then_nothing_is_new(engine):
    info = engine.precompile(batch_sizes=(1, 3), prompt_lens=(10,), max_tokens=20)
    shapes = {(s["function"], s["batch"], s["length"], s["cache_len"]) for s in info["shapes"]}
    assert ("prefill", 1, 16, 128, ) in {x[:4] for x in shapes}
    assert ("prefill", 4, 16, 128) in shapes  # 3 rows run in the batch bucket of 4
    assert {s["function"] for s in info["shapes"]} == {"prefill", "decode"}
    assert info["bound"] == engine.compile_bound()
    assert len(info["shapes"]) <= info["bound"]["total"]
    assert info["seconds"] > 0
    again = engine.precompile(batch_sizes=(1, 3), prompt_lens=(10,), max_tokens=20)
    assert again["shapes"] == []
    before = engine.shapes.snapshot()
    sp = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    engine.generate([[5] * 9, [6] * 12], sp)  # batch bucket 2: new shapes, and recorded
    assert engine.shapes.snapshot() > before
    engine.generate([[7] * 11] * 3, sp)  # what precompile covered: nothing new
    after = engine.shapes.snapshot()
    engine.generate([[8] * 14] * 3, sp)  # another prompt length in the same buckets
    assert engine.shapes.snapshot() == after
