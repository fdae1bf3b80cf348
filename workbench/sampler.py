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
6. greedy rows (temperature 0 or top_k 1) take the argmax here. Sampled rows continue:
7. divide by temperature
8. min_p: drop tokens with prob < min_p * max_prob
9. top-k: keep the k largest logits
10. top-p: keep the smallest set of most likely tokens whose cumulative probability (of the
    distribution left after 8-9) is >= top_p; the top token always stays
11. sample from the softmax of what is left with the row's key

Determinism: the key of row b's token at output position p is
`jax.random.fold_in(key_from_seed(seed_b), p)`. It depends on (seed, p) only, never on the batch
slot, the step count or the batch size, so a seeded request reproduces whatever it is batched
with.

Returned logprobs (`SamplerOutput.logprobs`, `top_logprobs`) are the log-softmax of the RAW logits
(step 1), before bias, penalties, temperature and filtering, as OpenAI and vLLM return them.

Speed: steps 1-8 are elementwise. The sort that top-k / top-p need runs under `lax.cond`, only
when some sampled row of the batch asks for them; an all-greedy batch skips steps 7-11 entirely.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

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


def _scatter_rows(x: jnp.ndarray, ids: jnp.ndarray, values: jnp.ndarray, *, add: bool):
    """x `[B, V]`; at (b, ids[b, j]) add/set values (broadcast to ids `[B, J]`); ids < 0 skipped."""
    b, v = x.shape
    ids = jnp.where(ids >= 0, ids, v)  # v is out of bounds: dropped
    rows = jnp.arange(b)[:, None]
    ref = x.at[rows, ids]
    return ref.add(values, mode="drop") if add else ref.set(values, mode="drop")


def apply_penalties_and_bias(
    logits: jnp.ndarray, t: SamplingTensors, state: PenaltyState, output_pos: jnp.ndarray
) -> jnp.ndarray:
    """Steps 1-5: logits `[B, V]`, output_pos `[B]` i32 (tokens generated so far) -> `[B, V]` f32."""
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
    return (t.temperature <= 0) | (t.top_k == 1)  # [B] bool


def filter_logits(x: jnp.ndarray, t: SamplingTensors) -> jnp.ndarray:
    """Steps 7-10 for every row: processed logits `[B, V]` -> filtered, scaled logits `[B, V]`.

    Greedy rows are scaled by 1 (their result is unused). Entries dropped are -inf.
    """
    v = x.shape[-1]
    temperature = jnp.where(_greedy_rows(t), 1.0, t.temperature)  # [B]
    x = x / temperature[:, None]

    # min_p: p < min_p * p_max  <=>  x < x_max + log(min_p)   (log(0) = -inf keeps everything)
    x_max = jnp.max(x, axis=-1, keepdims=True)  # [B, 1]
    x = jnp.where(x < x_max + jnp.log(t.min_p)[:, None], NEG_INF, x)

    k = jnp.where((t.top_k > 0) & (t.top_k < v), t.top_k, v)  # [B]
    use_p = t.top_p < 1.0  # [B]
    needs_sort = (k < v) | use_p  # [B]

    def sort_filter(x: jnp.ndarray) -> jnp.ndarray:
        idx = jnp.arange(v)[None, :]  # [1, V]
        desc = jnp.sort(x, axis=-1, descending=True)  # [B, V]
        in_k = (idx < k[:, None]) & (desc > NEG_INF)  # [B, V], a prefix
        probs = jax.nn.softmax(jnp.where(in_k, desc, NEG_INF), axis=-1)  # [B, V]
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
        keep = in_k & ((mass_before < t.top_p[:, None]) | ~use_p[:, None])  # [B, V], a prefix
        num_kept = jnp.maximum(jnp.sum(keep, axis=-1), 1)  # [B]
        threshold = jnp.take_along_axis(desc, (num_kept - 1)[:, None], axis=-1)  # [B, 1]
        return jnp.where(x >= threshold, x, NEG_INF)

    return jax.lax.cond(jnp.any(needs_sort & ~_greedy_rows(t)), sort_filter, lambda x: x, x)


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
    greedy_tokens = jnp.argmax(x, axis=-1).astype(jnp.int32)  # [B]
    greedy = _greedy_rows(t)  # [B]

    def sampled(x: jnp.ndarray) -> jnp.ndarray:
        filtered = filter_logits(x, t)  # [B, V]
        keys = jax.vmap(lambda s, p: jax.random.fold_in(key_from_seed(s), p))(
            t.seed, output_pos.astype(jnp.uint32)
        )  # [B] keys
        drawn = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)  # [B]
        return jnp.where(greedy, greedy_tokens, drawn)

    tokens = jax.lax.cond(jnp.all(greedy), lambda x: greedy_tokens, sampled, x)  # [B]

    lse = jax.nn.logsumexp(raw, axis=-1)  # [B]
    chosen = jnp.take_along_axis(raw, tokens[:, None], axis=-1)[:, 0] - lse  # [B]
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
