"""vInference's shape bound and precompile(): the bound counts exactly the prefill shapes
requests can reach, precompile() returns what it dispatched, and what it covered compiles
nothing new afterwards."""

import dataclasses

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
    prompts, grows = set(), set()
    for n in range(1, max_len):  # a prompt of n tokens asking for 1..max_len-n new ones
        T = pick_bucket(n, prompt_b)
        prompts.add(T)
        for total in range(n + 1, max_len + 1):
            S = pick_bucket(total, cache_b)
            if S != T:
                grows.add((T, S))
    bound = shape_bound(batch_b, prompt_b, cache_b, lambda b, s: [1])
    assert bound["prefill"] == len(batch_b) * len(prompts)
    assert bound["grow"] == len(batch_b) * len(grows)
    assert bound["decode"] == len(batch_b) * len(cache_b)
    assert bound["total"] == bound["prefill"] + bound["grow"] + bound["decode"]


@pytest.fixture(scope="module")
def engine(tiny_random_lm):
    from workbench.engines.vinference import vInference

    with vInference(tiny_random_lm, max_batch_size=4, max_model_len=128) as e:
        yield e


def test_precompile_returns_what_it_compiled_and_then_nothing_is_new(engine):
    info = engine.precompile(batch_sizes=(1, 3), prompt_lens=(10,), max_tokens=20)
    shapes = {(s["function"], s["batch"], s["length"], s["cache_len"]) for s in info["shapes"]}
    # the prompt bucket 16 prefills into a 16-position cache, grown to the cache bucket 128
    assert {("prefill", 1, 16, 16), ("grow", 1, 16, 128)} <= shapes
    assert ("prefill", 4, 16, 16) in shapes  # 3 rows run in the batch bucket of 4
    assert {s["function"] for s in info["shapes"]} == {"prefill", "grow", "decode"}
    assert info["bound"] == engine.compile_bound()
    assert len(info["shapes"]) <= info["bound"]["total"]
    assert info["seconds"] > 0
    again = engine.precompile(batch_sizes=(1, 3), prompt_lens=(10,), max_tokens=20)
    assert again["shapes"] == []
    before = engine.shapes.snapshot()
    sp = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    engine.generate([[5] * 9, [6] * 12], sp)  # batch bucket 2: new shapes, and recorded
    assert engine.shapes.snapshot() > before
    fns = [engine.runner.prefill, engine.runner.grow_cache, engine.runner.decode_loop]
    compiled = [f._cache_size() for f in fns]  # what jit holds, not only the ledger
    engine.generate([[7] * 11] * 3, sp)  # what precompile covered: nothing new
    after = engine.shapes.snapshot()
    engine.generate([[8] * 14] * 3, sp)  # another prompt length in the same buckets
    assert engine.shapes.snapshot() == after
    assert [f._cache_size() for f in fns] == compiled


def test_grown_cache_keeps_every_entry_and_pads_with_zeros():
    import jax.numpy as jnp
    import numpy as np

    from workbench.models.kv_cache import ContiguousKVCache

    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.normal(size=(2, 3, 1, 16, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 3, 1, 16, 4)), jnp.float32)
    cache = ContiguousKVCache(k=k, v=v)
    big = cache.grown(48)
    assert big.max_len == 48 and big.batch_size == 3
    np.testing.assert_array_equal(big.k[:, :, :, :16], k)
    np.testing.assert_array_equal(big.v[:, :, :, :16], v)
    assert not np.asarray(big.k[:, :, :, 16:]).any() and not np.asarray(big.v[:, :, :, 16:]).any()
    small = cache.grown(8)  # a prompt bucket above the cache bucket: the unused tail is cut
    np.testing.assert_array_equal(small.k, k[:, :, :, :8])
    assert cache.grown(16).max_len == 16


@pytest.mark.parametrize("rows,n,max_tokens", [(1, 5, 40), (4, 30, 7), (2, 100, 28), (3, 17, 1)])
def test_precompile_covers_the_batch_it_names(tiny_random_lm, rows, n, max_tokens):
    """Compile-only precompile (no decoding) dispatches every shape the same batch then takes:
    across read sizes (16-position blocks, 4-step chunks), cache grows and prompt buckets."""
    from workbench.engines.vinference import vInference

    with vInference(tiny_random_lm, max_batch_size=4, max_model_len=160, block_size=16,
                    streaming_chunk=4) as eng:
        info = eng.precompile(batch_sizes=(rows,), prompt_lens=(n,), max_tokens=max_tokens)
        fns = [eng.runner.prefill, eng.runner.grow_cache, eng.runner.decode_loop]
        compiled = [f._cache_size() for f in fns]
        ledger = eng.shapes.snapshot()
        sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        outs = eng.generate([[9] * n] * rows, sp)
        assert [len(o.outputs[0].token_ids) for o in outs] == [max_tokens] * rows
        assert eng.shapes.snapshot() == ledger, sorted(eng.shapes.snapshot() - ledger)
        assert [f._cache_size() for f in fns] == compiled
        assert len(info["shapes"]) <= info["bound"]["total"]
    # and nothing more: a fresh engine running the batch dispatches exactly those shapes
    with vInference(tiny_random_lm, max_batch_size=4, max_model_len=160, block_size=16,
                    streaming_chunk=4) as fresh:
        fresh.generate([[9] * n] * rows, sp)
        assert {tuple(x.values()) for x in info["shapes"]} == {
            dataclasses.astuple(x) for x in fresh.shapes.snapshot()}


def test_precompile_rejects_what_cannot_run(engine):
    with pytest.raises(ValueError, match="max_batch_size"):
        engine.precompile(batch_sizes=(5,), prompt_lens=(10,))
    with pytest.raises(ValueError, match="max_model_len"):
        engine.precompile(batch_sizes=(1,), prompt_lens=(128,))


def test_precompile_needs_an_idle_open_engine(tiny_random_lm):
    from workbench.engines.types import EngineError
    from workbench.engines.vinference import vInference

    eng = vInference(tiny_random_lm, max_batch_size=2, max_model_len=128)
    with eng:
        stream = eng.stream([5] * 8, SamplingParams(max_tokens=100, temperature=0,
                                                   ignore_eos=True))
        next(iter(stream))  # a request is running
        with pytest.raises(EngineError, match="idle"):
            eng.precompile(batch_sizes=(1,), prompt_lens=(8,), max_tokens=4)
        stream.close()
    with pytest.raises(EngineError, match="closed"):
        eng.precompile(batch_sizes=(1,), prompt_lens=(8,), max_tokens=4)
