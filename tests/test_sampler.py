"""The on-device sampler against a NumPy reference.

Shapes are kept to a few (B, V) pairs so each jit compiles once; seeds are fixed, so every
statistical check is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.sampler import (
    PenaltyState,
    SamplerOutput,
    SamplingTensors,
    apply_penalties_and_bias,
    filter_logits,
    key_from_seed,
    sample_jit,
)
from workbench.sampling_params import SamplingParams as SP
from workbench.sampling_tensors import bucket, seed_words

EOS = (0,)
penalties_jit = jax.jit(apply_penalties_and_bias)
filter_jit = jax.jit(filter_logits)


def run(
    logits: np.ndarray,
    params: Sequence[SP | None],
    *,
    pos: Sequence[int] | int = 0,
    seeds: Sequence[int] | None = None,
    state: PenaltyState | None = None,
    pad_to: int | None = None,
    num_top_logprobs: int = 0,
) -> SamplerOutput:
    b = pad_to or len(params)
    logits = np.asarray(logits, np.float32)
    if logits.shape[0] < b:
        logits = np.concatenate([logits, np.zeros((b - logits.shape[0], logits.shape[1]))])
    t = SamplingTensors.from_params(
        params,
        eos_token_ids=EOS,
        seeds=list(range(len(params))) if seeds is None else seeds,
        pad_to=pad_to,
    )
    state = state or PenaltyState.init([], logits.shape[1], pad_to=b)
    pos_arr = jnp.broadcast_to(jnp.asarray(pos, jnp.int32), (b,))
    return sample_jit(
        jnp.asarray(logits, jnp.float32), t, state, pos_arr, num_top_logprobs=num_top_logprobs
    )


# ---------------------------------------------------------------- NumPy reference


def ref_penalties(logits, p: SP, counts, prompt_mask, pos) -> np.ndarray:
    x = logits.astype(np.float64).copy()
    for token, bias in (p.logit_bias or {}).items():
        x[token] += bias
    if pos < p.min_tokens:
        x[list(EOS) + list(p.stop_token_ids)] = -np.inf
    if p.ignore_eos:
        x[list(EOS)] = -np.inf
    seen = prompt_mask | (counts > 0)
    rep = p.repetition_penalty
    x = np.where(seen, np.where(x > 0, x / rep, x * rep), x)
    return x - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_allowed(x: np.ndarray, p: SP) -> tuple[np.ndarray, np.ndarray]:
    """(allowed mask, renormalised probabilities) after temperature, min_p, top-k, top-p."""
    z = x / p.temperature
    probs = softmax(z)
    keep = probs >= p.min_p * probs.max()
    order = np.argsort(-z, kind="stable")
    if p.top_k > 0:
        ranked = [i for i in order if keep[i]][: p.top_k]
        keep = np.isin(np.arange(len(x)), ranked)
    if p.top_p < 1:
        q = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
        before = 0.0
        for i in order:
            if keep[i]:
                keep[i] = before < p.top_p
                before += q[i]
    q = np.where(keep, probs, 0)
    return keep, q / q.sum()


def random_filter_params(rng: np.random.Generator, x: np.ndarray) -> SP:
    """Random temperature/min_p/top_k/top_p with thresholds half-way between neighbouring
    values, so float32 rounding cannot flip a boundary token."""
    v = len(x)
    temperature = float(rng.uniform(0.5, 1.5))
    z = np.sort(x / temperature)[::-1]
    min_p = 0.0
    if rng.random() < 0.5:
        i = int(rng.integers(1, v))
        if z[i - 1] - z[i] > 1e-2:
            min_p = float(np.exp((z[i - 1] + z[i]) / 2 - z[0]))
    top_k = int(rng.choice([0, 0, 1, 2, 3, 5, v - 1, v + 3]))
    p = SP(temperature=temperature, min_p=min_p, top_k=top_k)
    if rng.random() < 0.7:
        keep, q = ref_allowed(x, p)
        cum = np.cumsum(np.sort(q[keep])[::-1])
        i = int(rng.integers(0, len(cum)))
        lo, hi = (cum[i - 1] if i else 0.0), cum[i]
        if hi - lo > 1e-3 and (lo + hi) / 2 < 1:
            p = SP(temperature=temperature, min_p=min_p, top_k=top_k, top_p=(lo + hi) / 2)
    return p


# ---------------------------------------------------------------- tests


def test_key_from_seed_matches_prng_key() -> None:
    for seed in (0, 7, 123456789):
        words = jnp.asarray(seed_words(seed), jnp.uint32)
        expected = jax.random.key_data(jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(jax.random.key_data(key_from_seed(words)), expected)
    assert seed_words(2**40 + 3) == (2**8, 3)


def test_from_params_layout() -> None:
    params = [SP(temperature=0.5, top_k=-1, logit_bias={"3": 1.5}, stop_token_ids=[5, 6]), None]
    t = SamplingTensors.from_params(params, eos_token_ids=[0, 1], seeds=[11, 12], pad_to=4)
    assert t.batch_size == 4 and t.bias_ids.shape == (4, 4) and t.stop_ids.shape == (4, 4)
    np.testing.assert_array_equal(t.temperature, [0.5, 0, 0, 0])
    np.testing.assert_array_equal(t.top_k, [0, 0, 0, 0])
    np.testing.assert_array_equal(t.stop_ids[0], [0, 1, 5, 6])
    np.testing.assert_array_equal(t.stop_ids[2], [-1, -1, -1, -1])
    np.testing.assert_array_equal(t.bias_ids[0], [3, -1, -1, -1])
    np.testing.assert_array_equal(t.seed[:2], [[0, 11], [0, 12]])
    assert SamplingTensors.from_params([SP(seed=99)], eos_token_ids=[0], seeds=[1]).seed[0, 1] == 99
    assert [bucket(n) for n in (0, 4, 5, 17)] == [4, 4, 8, 32]
    with pytest.raises(ValueError, match="pad_to"):
        SamplingTensors.from_params(params, eos_token_ids=[0], seeds=[1, 2], pad_to=1)
    with pytest.raises(ValueError, match="seeds"):
        SamplingTensors.from_params(params, eos_token_ids=[0], seeds=[1])


def test_penalty_state_init_and_update() -> None:
    state = PenaltyState.init([[1, 2, 2], [3]], vocab_size=6, pad_to=3)
    np.testing.assert_array_equal(state.prompt_mask[0], [0, 1, 1, 0, 0, 0])
    assert not state.prompt_mask[2].any()
    active = jnp.array([True, True, False])
    state = jax.jit(PenaltyState.update)(state, jnp.array([4, 4, 5]), active)
    state = state.update(jnp.array([4, 0, -1]))
    np.testing.assert_array_equal(
        state.counts, [[0, 0, 0, 0, 2, 0], [1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]
    )


def test_penalties_and_bias_match_reference() -> None:
    rng = np.random.default_rng(0)
    b, v = 8, 16
    logits = rng.normal(0, 3, (b, v)).astype(np.float32)
    counts = rng.integers(0, 3, (b, v)) * (rng.random((b, v)) < 0.4)
    prompt = rng.random((b, v)) < 0.3
    pos = rng.integers(0, 4, b)
    params = []
    for row in range(b):
        bias_ids = rng.choice(v, size=int(rng.integers(0, 4)), replace=False)
        params.append(
            SP(
                temperature=float(row % 2),
                repetition_penalty=float(rng.uniform(0.5, 2.0)),
                frequency_penalty=float(rng.uniform(-2, 2)),
                presence_penalty=float(rng.uniform(-2, 2)),
                logit_bias={str(i): float(rng.uniform(-5, 5)) for i in bias_ids},
                min_tokens=int(rng.integers(0, 4)),
                stop_token_ids=[int(rng.integers(1, v))],
                ignore_eos=bool(row % 3 == 0),
            )
        )
    t = SamplingTensors.from_params(params, eos_token_ids=EOS, seeds=list(range(b)))
    state = PenaltyState(counts=jnp.asarray(counts, jnp.int32), prompt_mask=jnp.asarray(prompt))
    got = penalties_jit(jnp.asarray(logits), t, state, jnp.asarray(pos, jnp.int32))
    want = np.stack(
        [ref_penalties(logits[i], params[i], counts[i], prompt[i], pos[i]) for i in range(b)]
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert np.isinf(want).any()  # masking was exercised

    # greedy rows of the batch take the argmax of exactly these processed logits
    out = sample_jit(jnp.asarray(logits), t, state, jnp.asarray(pos, jnp.int32))
    np.testing.assert_array_equal(np.asarray(out.tokens)[::2], want.argmax(-1)[::2])


def test_filtering_matches_reference_and_samples_stay_in_allowed_set() -> None:
    rng = np.random.default_rng(1)
    v, configs, draws = 12, 32, 64
    xs = rng.normal(0, 2, (configs, v)).astype(np.float32)
    params = [random_filter_params(rng, x) for x in xs]
    refs = [ref_allowed(x.astype(np.float64), p) for x, p in zip(xs, params)]
    assert any(p.top_p < 1 for p in params) and any(p.min_p > 0 for p in params)
    assert any(1 < p.top_k < v for p in params)

    # the kept set is exactly the reference's
    t = SamplingTensors.from_params(params, eos_token_ids=EOS, seeds=[0] * configs)
    filtered = np.asarray(filter_jit(jnp.asarray(xs), t))
    for row, (p, (keep, _)) in enumerate(zip(params, refs)):
        if not p.is_greedy:
            np.testing.assert_array_equal(np.isfinite(filtered[row]), keep, err_msg=str(p))

    # many seeds per config: every draw is allowed; every likely token shows up
    rows = [c for c in range(configs) for _ in range(draws)]
    out = run(xs[rows], [params[c] for c in rows], seeds=list(range(len(rows))), pos=3)
    tokens = np.asarray(out.tokens).reshape(configs, draws)
    for c, (keep, q) in enumerate(refs):
        if params[c].is_greedy:
            assert (tokens[c] == int(np.argmax(xs[c]))).all()
            continue
        assert keep[tokens[c]].all(), (params[c], tokens[c], np.flatnonzero(keep))
        assert set(np.flatnonzero(q > 0.15)) <= set(tokens[c]), (params[c], q)


@pytest.mark.parametrize(
    "params",
    [SP(temperature=1.0), SP(temperature=0.6), SP(temperature=1.3, top_k=4, top_p=0.8)],
    ids=["t1", "t0.6", "t1.3-topk4-topp0.8"],
)
def test_sampled_frequencies_match_softmax(params: SP) -> None:
    from scipy import stats

    draws = 4000
    x = np.array([1.0, 0.5, 0.0, -0.5, 2.0, -1.0], np.float32)
    out = run(np.tile(x, (draws, 1)), [params] * draws, seeds=list(range(draws)), pos=7)
    observed = np.bincount(np.asarray(out.tokens), minlength=len(x))
    keep, q = ref_allowed(x.astype(np.float64), params)
    assert observed[~keep].sum() == 0
    result = stats.chisquare(observed[keep], q[keep] * draws)
    assert result.pvalue > 1e-3, (observed, q * draws, result)


def test_greedy_equals_argmax_and_mixed_batch() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (8, 16)).astype(np.float32)
    out = run(logits, [SP(temperature=0)] * 8)  # all-greedy batch (skips sampling)
    np.testing.assert_array_equal(out.tokens, logits.argmax(-1))

    params = [SP(temperature=0), SP(temperature=1.0), SP(top_k=1), SP(temperature=2.0, top_k=3)]
    params = params * 2
    sampled = [row for row, p in enumerate(params) if not p.is_greedy]
    moved = False
    for offset in range(0, 40, 8):  # a few seed sets, same shapes: no recompilation
        tokens = np.asarray(run(logits, params, seeds=range(offset, offset + 8)).tokens)
        for row, p in enumerate(params):
            if p.is_greedy:
                assert tokens[row] == logits[row].argmax()
            elif p.top_k == 3:
                assert tokens[row] in np.argsort(-logits[row])[:3]
        moved |= bool((tokens[sampled] != logits[sampled].argmax(-1)).any())
    assert moved  # the sampled rows really sampled


def test_min_tokens_and_ignore_eos() -> None:
    x = np.array([10, 9, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)  # EOS = 0
    greedy_min = SP(temperature=0, min_tokens=3, stop_token_ids=[1])
    params = [greedy_min] * 4 + [
        SP(temperature=0, ignore_eos=True, stop_token_ids=[1]),  # EOS masked, stop id allowed
        SP(temperature=0, ignore_eos=True, min_tokens=5, stop_token_ids=[1]),
        SP(temperature=0),
        SP(temperature=0, stop_token_ids=[1]),
    ]
    out = run(np.tile(x, (8, 1)), params, pos=[0, 1, 2, 3, 100, 0, 0, 0])
    np.testing.assert_array_equal(out.tokens, [2, 2, 2, 0, 1, 2, 0, 0])

    # sampled rows: EOS / stop ids never drawn before min_tokens
    flat = np.zeros((8, 16), np.float32)
    out = run(flat, [SP(min_tokens=4, stop_token_ids=[1, 2])] * 8, seeds=range(8), pos=3)
    assert not np.isin(np.asarray(out.tokens), [0, 1, 2]).any()
    out = run(flat, [SP(ignore_eos=True)] * 8, seeds=range(8), pos=50)
    assert (np.asarray(out.tokens) != 0).all()


def test_logit_bias_forces_token() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (8, 16)).astype(np.float32)
    out = run(logits, [SP(temperature=1.5, logit_bias={"7": 100})] * 8, seeds=range(8))
    assert (np.asarray(out.tokens) == 7).all()
    top = logits.argmax(-1)
    banned = [SP(temperature=0, logit_bias={int(top[r]): -100}) for r in range(8)]
    out = run(logits, banned)
    assert (np.asarray(out.tokens) != top).all()


def test_seeded_determinism_across_batches() -> None:
    rng = np.random.default_rng(4)
    v, n = 16, 20
    target = rng.normal(0, 1, v).astype(np.float32)
    seeded = [SP(temperature=1.2, top_p=0.95, seed=1000 + i) for i in range(n)]
    alone = np.asarray(run(np.tile(target, (n, 1)), seeded, pos=9).tokens)
    assert len(set(alone.tolist())) > 3  # the seeds matter

    # the same rows shuffled into a bigger batch among unrelated rows, with other fallbacks
    slots = rng.permutation(32)[:n]
    params: list[SP | None] = [None] * 32
    logits = rng.normal(0, 3, (32, v)).astype(np.float32)
    pos = rng.integers(0, 50, 32)
    for i, slot in enumerate(slots):
        params[slot], logits[slot], pos[slot] = seeded[i], target, 9
    for slot in set(range(32)) - set(slots.tolist()):
        params[slot] = SP(temperature=float(rng.uniform(0, 2)), top_k=int(rng.integers(0, 5)))
    mixed = np.asarray(run(logits, params, pos=pos, seeds=range(500, 532)).tokens)
    np.testing.assert_array_equal(mixed[slots], alone)

    # unseeded rows are deterministic in their fallback seed too, and the position matters
    unseeded = [SP(temperature=1.2, top_p=0.95)] * n
    again = run(np.tile(target, (n, 1)), unseeded, pos=9, seeds=[1000 + i for i in range(n)])
    np.testing.assert_array_equal(again.tokens, alone)
    later = run(np.tile(target, (n, 1)), seeded, pos=10)
    assert (np.asarray(later.tokens) != alone).any()


def test_logprobs_are_raw_log_softmax() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, (8, 16)).astype(np.float32)
    params = [
        SP(temperature=0.7, top_k=3, presence_penalty=1.5, logit_bias={1: 30}, logprobs=True),
        SP(temperature=0, repetition_penalty=1.7, logprobs=True, top_logprobs=3),
    ] * 4
    state = PenaltyState.init([[int(logits[r].argmax())] for r in range(8)], 16)
    out = run(logits, params, state=state, num_top_logprobs=3)
    raw = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    tokens = np.asarray(out.tokens)
    np.testing.assert_allclose(out.logprobs, raw[np.arange(8), tokens], rtol=1e-6, atol=1e-6)
    assert (tokens[::2] == 1).all()  # the bias changed the choice, not the logprob
    top = np.asarray(out.top_logprobs)
    assert out.top_ids.shape == (8, 3) and out.top_ids.dtype == jnp.int32
    assert (np.diff(top, axis=-1) <= 0).all()
    np.testing.assert_array_equal(out.top_ids, np.argsort(-raw, axis=-1)[:, :3])
    np.testing.assert_allclose(top, -np.sort(-raw, axis=-1)[:, :3], rtol=1e-6, atol=1e-6)
    empty = run(logits, params, state=state)
    assert empty.top_ids.shape == (8, 0) and empty.top_logprobs.shape == (8, 0)
