"""The on-device sampler: one pure, jit-able function over a batch with per-row parameters.

Each row carries its own parameters (`SamplingTensors`), so one batch mixes greedy and sampled
requests. Order of operations, as in vLLM:

1. raw logits (cast to f32)
2. + logit_bias
3. masking (-inf): `stop_ids` (EOS + stop_token_ids) while the row has produced fewer than
   `min_tokens` tokens; `eos_ids` for the whole generation when `ignore_eos`
4. repetition penalty over prompt + generated tokens: logits > 0 divided by it, < 0 multiplied
5. frequency / presence penalties over generated tokens only:
   logits -= frequency * count + presence * (count > 0)
6. greedy rows (temperature below 1e-5, or top_k 1) take the argmax here. Sampled rows continue:
7. divide by temperature
8. min_p: drop tokens with prob < min_p * max_prob
9. top-k: keep the k largest logits
10. top-p: keep the smallest set of most likely tokens whose cumulative probability (of the
    distribution left after 8-9) is >= top_p; the top token always stays
11. sample from the softmax of what is left with the row's key (inverse CDF, one uniform); a row
    whose distribution overflowed float32 (NaN) takes its argmax, and every token id is clipped
    to the vocabulary, so no parameter value can send a bad id to the model

Determinism: the key of row b's token at output position p is
`jax.random.fold_in(key_from_seed(seed_b), p)`. It depends on (seed, p) only, never on the batch
slot, the step count or the batch size, so a seeded request reproduces whatever it is batched
with.

Returned logprobs (`SamplerOutput.logprobs`, `top_logprobs`) are the log-softmax of the RAW logits
(step 1), before bias, penalties, temperature and filtering, as OpenAI and vLLM return them.

Speed (this runs every decode step): steps 1-9 are elementwise. Top-k and top-p need no sort:
their thresholds come from an exact 32-step bisection over the float order, each under
`lax.cond`, so a batch where no sampled row asks for them pays nothing. Sampling draws one
uniform per row (inverse CDF) rather than V Gumbel variates. An all-greedy batch skips steps
7-11 entirely (`lax.cond`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from workbench.sampling_params import GREEDY_TEMPERATURE
from workbench.sampling_tensors import PenaltyState, SamplingTensors

__all__ = [
    "PenaltyState",
    "SamplerOutput",
    "SamplingTensors",
    "apply_penalties_and_bias",
    "filter_logits",
    "key_from_seed",
    "sample",
    "sample_jit",
]

NEG_INF = -jnp.inf


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplerOutput:
    tokens: jnp.ndarray  # [B] i32 chosen token ids
    logprobs: jnp.ndarray  # [B] f32 log_softmax(raw logits)[token]
    top_ids: jnp.ndarray  # [B, N] i32 most likely token ids under the raw logits, best first
    top_logprobs: jnp.ndarray  # [B, N] f32 their raw log-probabilities, descending


def key_from_seed(seed: jnp.ndarray) -> jax.Array:
    """Typed threefry key from a `[2]` uint32 (hi, lo) seed (= `PRNGKey(seed)` under x64)."""
    return jax.random.wrap_key_data(seed.astype(jnp.uint32), impl="threefry2x32")


def _scatter_rows(
    x: jnp.ndarray, ids: jnp.ndarray, values: jnp.ndarray, *, add: bool
) -> jnp.ndarray:
    """x `[B, V]`; at (b, ids[b, j]) add/set values (broadcast to ids `[B, J]`); ids < 0 skipped."""
    b, v = x.shape
    ids = jnp.where(ids >= 0, ids, v)  # v is out of bounds: dropped
    rows = jnp.arange(b)[:, None]
    ref = x.at[rows, ids]
    return ref.add(values, mode="drop") if add else ref.set(values, mode="drop")


def apply_penalties_and_bias(
    logits: jnp.ndarray, t: SamplingTensors, state: PenaltyState, output_pos: jnp.ndarray
) -> jnp.ndarray:
    """Steps 1-5 (bias, masking, penalties): logits `[B, V]` -> processed logits `[B, V]` f32.

    output_pos `[B]` i32 is the number of tokens each row has generated so far.
    """
    x = logits.astype(jnp.float32)  # [B, V]
    x = _scatter_rows(x, t.bias_ids, t.bias_values, add=True)

    before_min = (output_pos < t.min_tokens)[:, None]  # [B, 1]
    masked = jnp.concatenate(
        [
            jnp.where(before_min, t.stop_ids, -1),  # [B, S]
            jnp.where(t.ignore_eos[:, None], t.eos_ids, -1),  # [B, E]
        ],
        axis=1,
    )
    x = _scatter_rows(x, masked, jnp.float32(NEG_INF), add=False)

    seen = state.prompt_mask | (state.counts > 0)  # [B, V]
    rep = t.repetition_penalty[:, None]  # [B, 1]
    x = jnp.where(seen, jnp.where(x > 0, x / rep, x * rep), x)

    counts = state.counts.astype(jnp.float32)  # [B, V]
    x = x - t.frequency_penalty[:, None] * counts
    x = x - t.presence_penalty[:, None] * (counts > 0)
    return x


def _greedy_rows(t: SamplingTensors) -> jnp.ndarray:
    return (t.temperature < GREEDY_TEMPERATURE) | (t.top_k == 1)  # [B] bool


def _ordered_keys(x: jnp.ndarray) -> jnp.ndarray:
    """f32 -> i32 keys with the same order (a < b  <=>  key(a) < key(b)), -inf lowest."""
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    return i ^ ((i >> 31) & 0x7FFFFFFF)


def _max_key_where(pred: Callable[[jnp.ndarray], jnp.ndarray], batch: int) -> jnp.ndarray:
    """Per row, the largest i32 key m with pred(m) True, for pred `[B] i32 -> [B] bool` monotone
    (True up to some m, then False) and True at INT32_MIN. Exact bisection: 32 steps."""
    lo = jnp.full((batch,), jnp.iinfo(jnp.int32).min, jnp.int32)  # pred(lo) holds
    hi = jnp.full((batch,), jnp.iinfo(jnp.int32).max, jnp.int32)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + ((lo | hi) & 1)  # ceil((lo + hi) / 2) without overflow
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    return jax.lax.fori_loop(0, 32, step, (lo, hi))[0]


def filter_logits(x: jnp.ndarray, t: SamplingTensors) -> jnp.ndarray:
    """Steps 7-10 for every row: processed logits `[B, V]` -> filtered, scaled logits `[B, V]`.

    Greedy rows are scaled by 1 (their result is unused). Dropped entries are -inf. Top-k and
    top-p thresholds are found without a sort, by an exact bisection over the float order
    (32 masked counts / sums per row, ~40x cheaper than a sort at V=49152 on CPU); ties with
    the threshold are kept. Each runs under `lax.cond`, only if some sampled row needs it.
    """
    b, v = x.shape
    sampled = ~_greedy_rows(t)  # [B]
    temperature = jnp.where(sampled, t.temperature, 1.0)  # [B]
    x = x / temperature[:, None]

    # min_p: p < min_p * p_max  <=>  x < x_max + log(min_p)   (log(0) = -inf keeps everything)
    x_max = jnp.max(x, axis=-1, keepdims=True)  # [B, 1]
    x = jnp.where(x < x_max + jnp.log(t.min_p)[:, None], NEG_INF, x)

    use_k = sampled & (t.top_k > 0) & (t.top_k < v)  # [B]
    use_p = sampled & (t.top_p < 1.0)  # [B]

    def top_k(x: jnp.ndarray) -> jnp.ndarray:
        keys = _ordered_keys(x)  # [B, V]
        # largest m with #(x >= m) >= k: the k-th largest value
        kth = _max_key_where(lambda m: jnp.sum(keys >= m[:, None], -1) >= t.top_k, b)  # [B]
        return jnp.where(use_k[:, None] & (keys < kth[:, None]), NEG_INF, x)

    def top_p(x: jnp.ndarray) -> jnp.ndarray:
        keys = _ordered_keys(x)  # [B, V]
        e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))  # [B, V] unnormalised probs
        need = t.top_p * jnp.sum(e, axis=-1)  # [B]
        # largest m with mass(x >= m) >= top_p: the smallest kept value of the nucleus
        low = _max_key_where(lambda m: jnp.sum(jnp.where(keys >= m[:, None], e, 0), -1) >= need, b)
        low = jnp.minimum(low, jnp.max(keys, axis=-1))  # the top token stays (top_p -> 0 in f32)
        return jnp.where(use_p[:, None] & (keys < low[:, None]), NEG_INF, x)

    x = jax.lax.cond(jnp.any(use_k), top_k, lambda x: x, x)
    return jax.lax.cond(jnp.any(use_p), top_p, lambda x: x, x)


def _first_true(mask: jnp.ndarray) -> jnp.ndarray:
    """Index of the first True along the last axis (its size if none). `[..., N]` -> `[...]` i32.

    (Two plain reductions: much faster on CPU than `jnp.argmax`'s variadic reduce.)"""
    n = mask.shape[-1]
    return jnp.min(jnp.where(mask, jnp.arange(n, dtype=jnp.int32), n), axis=-1)


def _argmax(x: jnp.ndarray) -> jnp.ndarray:
    """`jnp.argmax(x, -1)` (first index of the max) for `[B, V]`, ~6x faster on CPU."""
    return _first_true(x == jnp.max(x, axis=-1, keepdims=True))


DRAW_BLOCK = 256


def _draw(keys: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
    """One token per row from softmax(x) `[B, V]` by inverse CDF: a single uniform per row.

    Two levels (block masses, then one block's entries) instead of a length-V cumsum, which is
    slow on CPU. Entries with probability 0 (-inf) are never drawn.
    """
    b, v = x.shape
    blk = min(DRAW_BLOCK, v)
    nb = -(-v // blk)
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))  # [B, V]; dropped entries are 0
    e = jnp.pad(e, ((0, 0), (0, nb * blk - v))).reshape(b, nb, blk)  # [B, nb, blk]
    mass = jnp.sum(e, axis=-1)  # [B, nb]
    cdf = jnp.cumsum(mass, axis=-1)  # [B, nb]
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)  # [B] in [0, 1)
    target = u * cdf[:, -1]  # [B]

    def locate(cdf: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
        # first entry whose cdf passes target; if rounding leaves none, the last one with mass
        hit = _first_true(cdf > target[:, None])
        last = _first_true(cdf >= cdf[:, -1:])
        return jnp.where(hit < cdf.shape[-1], hit, last)

    j = locate(cdf, target)  # [B] block
    rows = jnp.arange(b)
    inner = jnp.cumsum(e[rows, j], axis=-1)  # [B, blk]
    i = locate(inner, target - (cdf[rows, j] - mass[rows, j]))  # [B] entry within block j
    return (j * blk + i).astype(jnp.int32)


def sample(
    logits: jnp.ndarray,
    t: SamplingTensors,
    state: PenaltyState,
    output_pos: jnp.ndarray,
    *,
    num_top_logprobs: int = 0,
) -> SamplerOutput:
    """Pick one token per row (see the module docstring). Pure; jit with num_top_logprobs static.

    Args:
        logits: `[B, V]` raw model logits (any float dtype).
        t: per-row parameters, batch size B.
        state: per-row token counts / prompt mask, `[B, V]`.
        output_pos: `[B]` i32 number of tokens the row has generated so far (0 for the first).
        num_top_logprobs: N, the width of `top_ids` / `top_logprobs` (0: empty `[B, 0]`).
    """
    raw = logits.astype(jnp.float32)  # [B, V]
    b = raw.shape[0]
    x = apply_penalties_and_bias(raw, t, state, output_pos)  # [B, V]
    greedy_tokens = _argmax(x)  # [B]
    greedy = _greedy_rows(t)  # [B]

    def sampled(x: jnp.ndarray) -> jnp.ndarray:
        filtered = filter_logits(x, t)  # [B, V]
        keys = jax.vmap(lambda s, p: jax.random.fold_in(key_from_seed(s), p))(
            t.seed, output_pos.astype(jnp.uint32)
        )  # [B] keys
        drawn = _draw(keys, filtered)  # [B]
        # a row whose distribution overflowed (a NaN, an inf, or nothing left: a temperature or
        # penalty at the edge of float32) has nothing to draw from: it takes its argmax instead.
        # max propagates NaN, so a finite max means every entry is finite or -inf.
        drawable = jnp.isfinite(jnp.max(filtered, axis=-1))  # [B]
        return jnp.where(greedy | ~drawable, greedy_tokens, drawn)

    tokens = jax.lax.cond(jnp.all(greedy), lambda x: greedy_tokens, sampled, x)  # [B]
    # never an id outside the vocabulary (an all-NaN row's argmax is V): a bad id would reach
    # the embedding and the KV cache of later steps
    tokens = jnp.clip(tokens, 0, raw.shape[-1] - 1)

    lse = jax.nn.logsumexp(raw, axis=-1)  # [B]
    chosen = raw[jnp.arange(b), tokens] - lse  # [B]
    if num_top_logprobs > 0:
        top_vals, top_ids = jax.lax.top_k(raw, num_top_logprobs)  # [B, N]
        top_logprobs = top_vals - lse[:, None]
    else:
        top_ids = jnp.zeros((b, 0), jnp.int32)
        top_logprobs = jnp.zeros((b, 0), jnp.float32)
    return SamplerOutput(
        tokens=tokens,
        logprobs=chosen,
        top_ids=top_ids.astype(jnp.int32),
        top_logprobs=top_logprobs,
    )


sample_jit = jax.jit(sample, static_argnames=("num_top_logprobs",))
"""`sample` compiled; one compilation per (shapes, num_top_logprobs)."""
