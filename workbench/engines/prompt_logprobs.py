"""Prompt logprobs: the log-probability of each prompt token given the tokens before it.

`prompt_logprobs(model, ids, num_top, max_len) -> list[PromptLogprob | None]` has one entry per
prompt position: None for position 0 (nothing predicts the first token), then, for position t,
`log_softmax(logits[t - 1])[ids[t]]`, its rank (1 = the most likely token) and the `num_top`
most likely alternatives. The logits are the RAW model logits, as the sampled tokens' logprobs.

Design: one extra full-prompt forward, run at request time only when a request asks for prompt
logprobs (OpenAI's `echo` + `logprobs`, vLLM's `prompt_logprobs`), shared by every engine,
instead of threading prompt logprobs through three prefill paths (vInference's batch prefill,
vSurge's slot prefill, eSurge's chunked ragged steps; a chunked or prefix-cached prompt is never
whole on device at once). The cost is one more prefill of the prompt, which scoring workloads
(lm-eval's log-likelihood, perplexity) pay once per request anyway. The forward is jitted over
`(graphdef, state)` and compiled once per length bucket (`prompt_buckets(max_len)`); the prompt
is right-padded (causal attention: padding after the last token changes nothing before it) and
the log-softmax, gather, rank and top-k all run on device, so only `[T]` and `[T, K]` arrays
come back. Thread-safe (it touches no engine state), so the server runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.engines.buckets import pick_bucket, prompt_buckets

MAX_PROMPT_TOP = 20  # top alternatives computed on device (sliced to what was asked)


@dataclasses.dataclass
class PromptLogprob:
    """One prompt position: its token's logprob and rank, and the top alternatives."""

    token_id: int
    logprob: float
    rank: int  # 1 + number of tokens strictly more likely than `token_id`
    top: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (token id, logprob)


@functools.lru_cache(maxsize=8)
def _scorer(graphdef, backend: str):
    @jax.jit
    def run(state, ids):  # ids: [1, T] right-padded
        model = nnx.merge(graphdef, state)
        positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
        hidden, _ = model(ids, positions, None, backend=backend)
        logp = jax.nn.log_softmax(model.logits(hidden)[0, :-1].astype(jnp.float32), axis=-1)
        target = ids[0, 1:]  # [T-1]: the token each position predicts
        token_lp = jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
        rank = 1 + jnp.sum(logp > token_lp[:, None], axis=-1)
        top_lp, top_ids = jax.lax.top_k(logp, MAX_PROMPT_TOP)
        return token_lp, rank, top_ids, top_lp

    return run


def prompt_logprobs(model, ids: list[int], num_top: int = 0,
                    max_len: int | None = None) -> list[PromptLogprob | None]:
    """See the module docstring. `model`: a `LoadedModel`; `num_top` in [0, 20]; `max_len`: the
    largest bucket (default: the model's position limit); a prompt longer raises ValueError."""
    if not 0 <= num_top <= MAX_PROMPT_TOP:
        raise ValueError(f"num_top must be in [0, {MAX_PROMPT_TOP}], got {num_top!r}")
    n = len(ids)
    if n == 0:
        raise ValueError("the prompt is empty")
    if n == 1:
        return [None]
    limit = max_len or model.config.max_position_embeddings
    padded = np.zeros((1, pick_bucket(n, prompt_buckets(max(limit, n)))), np.int32)
    padded[0, :n] = ids
    token_lp, rank, top_ids, top_lp = jax.device_get(
        _scorer(model.graphdef, model.attention_backend)(model.state, padded))
    out: list[PromptLogprob | None] = [None]
    for t in range(1, n):
        top = [(int(top_ids[t - 1, k]), float(top_lp[t - 1, k])) for k in range(num_top)]
        out.append(PromptLogprob(int(ids[t]), float(token_lp[t - 1]), int(rank[t - 1]), top))
    return out
