"""Ragged paged attention against a naive per-sequence loop, with both ways of reading the cached
past (the XLA tile loop and the Pallas kernel, interpreted on the CPU); the step batch builder."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.engines.ragged_batch import StepLayout, build_step
from workbench.models import paged_attention as pa
from workbench.models.paged_attention import (
    PagedAttentionMeta,
    naive_paged_attention,
    paged_attention,
)

L, P, S, Hkv, H, D = 2, 40, 4, 2, 4, 8


def _chunks(spec, rng, num_pages=P, page_size=S):
    """spec: (cached past, chunk tokens) per sequence -> chunks over distinct random pages."""
    free = list(rng.permutation(num_pages))
    out = []
    for row, (ctx, n) in enumerate(spec):
        pages = [int(free.pop()) for _ in range(-(-(ctx + n) // page_size))]
        out.append(types.SimpleNamespace(start=ctx, num_tokens=n, token_ids=[1] * n,
                                         from_device=False, samples=True, output_pos=0,
                                         page_ids=pages, row=row))
    return out


def _run(spec, layout, sliding_window=None, seed=0, jit=False, kernel="xla", heads=(H, Hkv),
         head_dim=D):
    H, Hkv = heads
    D, P, S = head_dim, layout.num_pages, layout.page_size
    rng = np.random.default_rng(seed)
    chunks = _chunks(spec, rng, P, S)
    arrays = layout.unpack(build_step(chunks, layout))
    T = layout.num_tokens
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k_new, v_new = (rng.standard_normal((T, Hkv, D)).astype(np.float32) for _ in range(2))
    k_cache, v_cache = (rng.standard_normal((L, P, S, Hkv, D)).astype(np.float32)
                        for _ in range(2))
    meta = PagedAttentionMeta.from_arrays({k: jnp.asarray(v) for k, v in arrays.items()},
                                          {"d": layout.lane_chunk("d"), "p": layout.lane_chunk("p")})
    fn = lambda *a: paged_attention(*a, sliding_window=sliding_window, kernel=kernel)  # noqa: E731
    if jit:
        fn = jax.jit(fn)
    got = np.asarray(fn(q, k_new, v_new, arrays["positions"], jnp.asarray(k_cache),
                        jnp.asarray(v_cache), 1, meta))
    seq_of = np.full(T, -1)
    off = 0
    for i, c in enumerate(chunks):
        seq_of[off:off + c.num_tokens] = i
        off += c.num_tokens
    want = naive_paged_attention(q, k_new, v_new, arrays["positions"], seq_of, k_cache, v_cache,
                                 1, [c.page_ids for c in chunks], [c.start for c in chunks],
                                 sliding_window=sliding_window)
    return got, want, seq_of


MIXED = [(0, 9), (7, 1), (13, 6), (30, 1), (0, 1), (21, 2), (5, 1)]


@pytest.fixture(params=["dense-fresh", "fresh-tiles"], autouse=True)
def fresh_path(request, monkeypatch):
    """Both ways of attending prompt chunks to their own tokens: the dense [T, T] product (small
    steps) and the loop over fresh tiles (steps above DENSE_FRESH_MAX_TOKENS)."""
    if request.param == "fresh-tiles":
        monkeypatch.setattr(pa, "DENSE_FRESH_MAX_TOKENS", 0)
    return request.param


@pytest.mark.parametrize("kernel", pa.KERNELS)
@pytest.mark.parametrize("window", [None, 5])
def test_mixed_prefills_chunks_and_decodes_match_a_per_sequence_loop(window, kernel):
    layout = StepLayout(num_tokens=32, max_num_seqs=8, page_size=S, num_pages=P, max_pages=10,
                        query_block=4, pages_per_tile=2)
    got, want, seq_of = _run(MIXED, layout, sliding_window=window, kernel=kernel)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(got[seq_of < 0] == 0)  # pads


@pytest.mark.parametrize("kernel", pa.KERNELS)
def test_under_jit_one_compiled_shape_serves_different_lengths(kernel):
    layout = StepLayout(num_tokens=16, max_num_seqs=4, page_size=S, num_pages=P, max_pages=10,
                        query_block=4, pages_per_tile=1)
    for seed, spec in enumerate([[(0, 16)], [(3, 1), (38, 1), (0, 1)], [(10, 5), (2, 11)],
                                 [(39, 1)]]):
        got, want, _ = _run(spec, layout, seed=seed, jit=True, kernel=kernel)
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_the_kernel_with_matrix_products_matches_the_xla_loop():
    """Rows, page size and head size all >= 16: the kernel's matrix-product path (the one a GPU
    takes for prompt chunks; decodes with few query heads per KV head take the other)."""
    layout = StepLayout(num_tokens=64, max_num_seqs=6, page_size=16, num_pages=24, max_pages=6,
                        query_block=16, pages_per_tile=2)
    spec = [(40, 20), (0, 24), (75, 1), (16, 1), (33, 2)]
    got, want, _ = _run(spec, layout, kernel="pallas", heads=(8, 2), head_dim=16, jit=True)
    np.testing.assert_allclose(got, want, atol=3e-5)
    xla, _, _ = _run(spec, layout, kernel="xla", heads=(8, 2), head_dim=16, jit=True)
    np.testing.assert_allclose(got, xla, atol=3e-5)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(spec=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 6)), min_size=1, max_size=4),
       window=st.sampled_from([None, 3, 9]), seed=st.integers(0, 2**16))
def test_the_kernel_on_generated_batches_matches_a_per_sequence_loop(spec, window, seed):
    """Random mixes of decodes and chunks, any past length (pages of 4, tiles of 2 pages); one
    compiled step (a 24-token bucket) for every example."""
    layout = StepLayout(num_tokens=24, max_num_seqs=4, page_size=S, num_pages=P, max_pages=10,
                        query_block=4, pages_per_tile=2)
    got, want, seq_of = _run(spec, layout, sliding_window=window, seed=seed, jit=True,
                             kernel="pallas")
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(got[seq_of < 0] == 0)


def test_an_unknown_kernel_is_a_clear_error():
    layout = StepLayout(num_tokens=8, max_num_seqs=2, page_size=S, num_pages=P, max_pages=4)
    with pytest.raises(ValueError, match="unknown paged attention kernel 'triton'; available: "
                                         "xla, pallas"):
        _run([(3, 1)], layout, kernel="triton")


def test_layout_packs_one_vector_and_rejects_overflow():
    layout = StepLayout(num_tokens=8, max_num_seqs=2, page_size=S, num_pages=P, max_pages=4)
    chunks = _chunks([(0, 5), (4, 1)], np.random.default_rng(0))
    packed = build_step(chunks, layout)
    assert packed.dtype == np.int32 and packed.shape == (layout.size,)
    a = layout.unpack(packed)
    assert a["positions"].tolist() == [0, 1, 2, 3, 4, 4, -1, -1]
    assert a["rows"].tolist() == [0, 1] and a["sample_idx"].tolist() == [4, 5]
    page = chunks[1].page_ids
    assert a["slots"][5] == page[1] * S + 0 and a["slots"][6] == P * S  # pads go nowhere
    assert int(a["d_num_tiles"]) == 1 and a["d_tile_pages"][0].tolist()[0] == page[0]
    with pytest.raises(ValueError, match="exceed the token bucket 8"):
        build_step(_chunks([(0, 5), (0, 4)], np.random.default_rng(0)), layout)
    with pytest.raises(ValueError, match="3 chunks exceed the layout's 2 sequences"):
        build_step(_chunks([(0, 1)] * 3, np.random.default_rng(0)), layout)
