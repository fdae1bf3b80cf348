"""The KV cache contract (`models/kv_cache.KVCache`), one test run against both implementations:
the contiguous cache (vInference, vSurge) and the paged cache (eSurge)."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from workbench.engines.ragged_batch import StepLayout, build_step
from workbench.models.attention import xla_attention
from workbench.models.config import ModelConfig
from workbench.models.kv_cache import ContiguousKVCache, KVCache, fresh_key_positions
from workbench.models.paged_attention import PagedAttentionMeta
from workbench.models.paged_kv_cache import PagedKVCache

L, Hkv, H, D, MAX_LEN = 3, 2, 4, 8, 32


class Contiguous:
    """One row of a contiguous cache; positions alone say where tokens go."""

    def new(self):
        return ContiguousKVCache.create(L, 1, MAX_LEN, Hkv, D, jnp.float32)

    def prepare(self, cache, start, n):
        return cache


class Paged:
    """One sequence on scattered pages of 4 positions."""

    pages = [6, 1, 9, 3, 0, 7, 2, 8]

    def new(self):
        return PagedKVCache.create(L, 10, 4, Hkv, D, jnp.float32)

    def prepare(self, cache, start, n):
        layout = StepLayout(num_tokens=n, max_num_seqs=4, page_size=4, num_pages=10,
                            max_pages=8, query_block=4, pages_per_tile=2)
        chunk = types.SimpleNamespace(start=start, num_tokens=n, token_ids=[0] * n, row=0,
                                      from_device=False, samples=True, output_pos=0,
                                      page_ids=self.pages[: -(-(start + n) // 4)])
        a = {k: jnp.asarray(v) for k, v in layout.unpack(build_step([chunk], layout)).items()}
        meta = PagedAttentionMeta.from_arrays(a, {"d": layout.lane_chunk("d"),
                                                  "p": layout.lane_chunk("p")})
        return cache.for_step(a["slots"], meta)


@pytest.mark.parametrize("impl", [Contiguous(), Paged()], ids=["contiguous", "paged"])
@pytest.mark.parametrize("window", [None, 6])
def test_attend_sees_the_written_past_and_the_fresh_chunk(impl, window):
    rng = np.random.default_rng(0)
    chunks = [(0, 7), (7, 5), (12, 1), (13, 1)]  # a prompt, a chunk, two decodes
    total = sum(n for _, n in chunks)
    keys = rng.standard_normal((L, 1, total, Hkv, D)).astype(np.float32)
    vals = rng.standard_normal((L, 1, total, Hkv, D)).astype(np.float32)
    queries = rng.standard_normal((1, total, H, D)).astype(np.float32)
    cache = impl.new()
    assert isinstance(cache, KVCache)
    for start, n in chunks:
        cache = impl.prepare(cache, start, n)
        pos = jnp.arange(start, start + n, dtype=jnp.int32)[None]
        sl = slice(start, start + n)
        k, v = jnp.asarray(keys[:, :, sl]), jnp.asarray(vals[:, :, sl])
        for layer in (0, 2):  # each layer reads its own past
            fresh = (k[layer].transpose(0, 2, 1, 3), v[layer].transpose(0, 2, 1, 3),
                     fresh_key_positions(pos))
            got = cache.attend(jnp.int32(layer), jnp.asarray(queries[:, sl]), pos, fresh,
                               backend="xla", sliding_window=window)
            # reference: dense causal attention over every key so far
            kk = jnp.asarray(keys[layer, :, :start + n]).transpose(0, 2, 1, 3)
            vv = jnp.asarray(vals[layer, :, :start + n]).transpose(0, 2, 1, 3)
            want = xla_attention(jnp.asarray(queries[:, sl]), kk, vv, pos,
                                 jnp.arange(start + n, dtype=jnp.int32)[None],
                                 sliding_window=window)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
        cache = cache.write(k, v, pos)


@pytest.mark.parametrize("cls", [ContiguousKVCache, PagedKVCache])
def test_every_cache_says_how_to_shard_and_its_size(cls):
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=10, hidden_size=16, intermediate_size=8, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=Hkv, head_dim=D)
    spec = cls.partition_spec(cfg, 2)
    assert len(spec) == 5 and spec.count("tp") == 1  # KV heads over tp
    assert "tp" not in cls.partition_spec(cfg, 3)  # 2 heads do not split 3 ways: replicated
    cache = (Contiguous() if cls is ContiguousKVCache else Paged()).new()
    assert cache.nbytes == 2 * cache.k.size * 4
    assert spec.index("tp") == {ContiguousKVCache: 2, PagedKVCache: 3}[cls]
