"""Logit parity with transformers for every architecture, and cache consistency."""

import numpy as np
import pytest
import torch

from tests.hf_models import ARCHS
from workbench.loading.loader import load_model


def _left_padded_batch(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = rng.integers(3, vocab, n)
        mask[b, T - n:] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_with_left_padding(arch, tiny_checkpoints):
    directory, hf_model = tiny_checkpoints[arch]
    lm = load_model(directory, dtype="float32", progress=False)
    ids, mask = _left_padded_batch(lm.config.vocab_size, [11, 7, 3])
    ours = lm.logits(ids, mask)
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        ).logits.float().numpy()
    valid = mask.astype(bool)
    assert ours.shape == ref.shape
    diff = np.abs(ours[valid] - ref[valid]).max()
    assert diff <= 1e-4, f"{arch}: max abs logit diff {diff}"
    assert np.isfinite(ours).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_decode_equals_full_forward(arch, tiny_checkpoints):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    directory, _ = tiny_checkpoints[arch]
    lm = load_model(directory, dtype="float32", progress=False)
    ids, mask = _left_padded_batch(lm.config.vocab_size, [12, 9], seed=1)
    full = lm.logits(ids, mask)
    positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, -1).astype(np.int32)
    model = nnx.merge(lm.graphdef, lm.state)
    cache = lm.new_cache(batch_size=2, max_len=32)
    P = 6  # prefill the first P columns, then one column at a time against the cache
    h, cache = model(jnp.asarray(ids[:, :P], jnp.int32), jnp.asarray(positions[:, :P]), cache,
                     attend_cache=False)
    steps = [np.asarray(model.logits(h))]
    for t in range(P, ids.shape[1]):
        h, cache = model(jnp.asarray(ids[:, t:t + 1], jnp.int32),
                         jnp.asarray(positions[:, t:t + 1]), cache)
        steps.append(np.asarray(model.logits(h)))
    stepped = np.concatenate(steps, axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(stepped[valid], full[valid], atol=1e-4, rtol=0)
    # The same cache read through a short read_len gives the same decode logits.
    jax.block_until_ready(cache.k)


def test_dot_product_attention_backend_matches_xla_with_padding(tiny_checkpoints):
    directory, _ = tiny_checkpoints["mistral"]
    ids, mask = _left_padded_batch(160, [11, 4, 7], seed=3)
    ref = load_model(directory, progress=False).logits(ids, mask)
    got = load_model(directory, progress=False, attention_backend="dot_product_attention").logits(
        ids, mask)
    valid = mask.astype(bool)
    assert np.isfinite(got[valid]).all()
    np.testing.assert_allclose(got[valid], ref[valid], atol=1e-4)
