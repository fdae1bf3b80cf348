"""Device side of the engines: jitted prefill and decode functions over `(graphdef, state)`.

Every function is pure and jitted once per shape, with the KV cache donated so XLA updates it in
place. Host code hands in plain arrays and gets back sampled token ids: one small transfer per step
(or per chunk of steps for `decode_loop`).

Shapes: B batch rows, T prefill length (a bucket), S cache length, N steps per chunk,
K top logprobs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.models.kv_cache import ContiguousKVCache, KVCache
from workbench.sampler import SamplerOutput, sample
from workbench.sampling_tensors import PenaltyState, SamplingTensors


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Per-row decode state carried from step to step (on device)."""

    tokens: jnp.ndarray  # [B] i32 last sampled token: the input of the next step
    positions: jnp.ndarray  # [B] i32 position at which `tokens` will be written
    output_pos: jnp.ndarray  # [B] i32 number of tokens generated so far
    done: jnp.ndarray  # [B] bool row finished (EOS / stop id / max_tokens) or idle
    max_tokens: jnp.ndarray  # [B] i32
    penalties: PenaltyState


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ChunkOutput:
    """Tokens of up to N decode steps; rows that were done hold -1."""

    tokens: jnp.ndarray  # [B, N] i32
    logprobs: jnp.ndarray  # [B, N] f32
    top_ids: jnp.ndarray  # [B, N, K] i32
    top_logprobs: jnp.ndarray  # [B, N, K] f32


def _stopped(tokens, t: SamplingTensors, output_pos):
    """[B] bool: the token just sampled at `output_pos` ends its row (device-side EOS/stop ids)."""
    hit = jnp.any(tokens[:, None] == t.stop_ids, axis=-1)
    return hit & (output_pos >= t.min_tokens)


class ModelRunner:
    """Compiled model functions for one `LoadedModel`."""

    def __init__(self, graphdef, backend: str = "xla"):
        self.graphdef = graphdef
        self.backend = backend
        self.prefill = jax.jit(self._prefill, donate_argnames=("cache",),
                               static_argnames=("num_top",))
        self.decode_loop = jax.jit(self._decode_loop, donate_argnames=("cache", "state"),
                                   static_argnames=("num_steps", "num_top", "num_rows"))
        self.move_rows = jax.jit(self._move_rows, donate_argnames=("cache", "state"))
        # vInference prefills into a cache of the prompt's bucket, then grows it to the batch's
        # cache bucket: the model's prefill compiles per prompt bucket only, this per pair
        self.grow_cache = jax.jit(ContiguousKVCache.grown, static_argnames=("max_len",))
        self.prefill_into_slots = jax.jit(self._prefill_into_slots,
                                          donate_argnames=("cache", "state"),
                                          static_argnames=("num_top",))

    def _prefill(self, params, cache: KVCache, ids, positions, last_idx, sampling: SamplingTensors,
                 penalties: PenaltyState, *, num_top: int) -> tuple[SamplerOutput, KVCache]:
        """Prefill ids `[B, T]` at positions `[B, T]` (-1 = pad) into an empty cache; sample the
        first token from the hidden state at `last_idx` `[B]`."""
        model = nnx.merge(self.graphdef, params)
        hidden, cache = model(ids, positions, cache, attend_cache=False, backend=self.backend)
        last = hidden[jnp.arange(ids.shape[0]), last_idx]  # [B, D]
        out = sample(model.logits(last), sampling, penalties,
                     jnp.zeros(ids.shape[0], jnp.int32), num_top_logprobs=num_top)
        return out, cache

    def _prefill_into_slots(self, params, cache: KVCache, state: DecodeState, ids, positions,
                            last_idx, slots, sampling: SamplingTensors, prompt_mask, max_tokens,
                            *, num_top: int) -> tuple[SamplerOutput, KVCache, DecodeState]:
        """Prefill P requests `[P, T]` straight into decode slots `slots` `[P]` (pad rows carry
        an out-of-range slot and write nothing) and reset those slots' decode state.

        This is vSurge's prefill + insert, fused: the KV lands in the slot rows directly.
        """
        P = ids.shape[0]
        penalties = PenaltyState(counts=jnp.zeros((P, prompt_mask.shape[1]), jnp.int32),
                                 prompt_mask=prompt_mask)
        model = nnx.merge(self.graphdef, params)
        hidden, cache = model(ids, positions, cache.with_rows(slots), attend_cache=False,
                              backend=self.backend)
        last = hidden[jnp.arange(P), last_idx]  # [P, D]
        zero = jnp.zeros(P, jnp.int32)
        out = sample(model.logits(last), sampling, penalties, zero, num_top_logprobs=num_top)
        penalties = penalties.update(out.tokens)
        done = _stopped(out.tokens, sampling, zero) | (max_tokens <= 1)

        def put(x, rows):
            return x.at[slots].set(rows.astype(x.dtype), mode="drop")

        state = DecodeState(
            tokens=put(state.tokens, out.tokens),
            positions=put(state.positions, last_idx + 1),
            output_pos=put(state.output_pos, jnp.ones(P, jnp.int32)),
            done=put(state.done, done),
            max_tokens=put(state.max_tokens, max_tokens),
            penalties=PenaltyState(counts=put(state.penalties.counts, penalties.counts),
                                   prompt_mask=put(state.penalties.prompt_mask, prompt_mask)),
        )
        return out, cache.with_rows(None), state

    def _move_rows(self, cache: KVCache, state: DecodeState, src, dst
                   ) -> tuple[KVCache, DecodeState]:
        """Move decode rows `src` `[M]` to `dst` `[M]` (KV cache and decode state); the source rows
        become done. Padding entries carry an out-of-range index in both and move nothing.
        vSurge compacts its live slots to the front with this, so a few live requests decode as
        a small batch."""
        def move(x):
            return x.at[dst].set(jnp.take(x, src, axis=0, mode="clip"), mode="drop")

        cache = cache.move_rows(src, dst)
        state = jax.tree.map(move, state)
        state = dataclasses.replace(state, done=state.done.at[src].set(True, mode="drop"))
        return cache, state

    def _decode_loop(self, params, cache: KVCache, state: DecodeState, sampling: SamplingTensors,
                     *, num_steps: int, num_top: int, num_rows: int | None = None
                     ) -> tuple[DecodeState, KVCache, ChunkOutput]:
        """Up to `num_steps` decode steps in one `lax.while_loop`; exits early when all rows are
        done. With `num_rows`, only the first `num_rows` rows of the state and cache take part
        (vSurge: the live slots cluster at the front), so few live requests cost a small batch;
        `sampling` then has `num_rows` rows."""
        full_state = state
        if num_rows is not None:
            state = jax.tree.map(lambda x: x[:num_rows], state)
            cache = cache.with_rows(jnp.arange(num_rows))
        state, cache, buf = self._decode_rows(params, cache, state, sampling,
                                              num_steps=num_steps, num_top=num_top)
        if num_rows is not None:
            state = jax.tree.map(lambda full, part: full.at[:num_rows].set(part), full_state, state)
            cache = cache.with_rows(None)
        return state, cache, buf

    def _decode_rows(self, params, cache, state, sampling, *, num_steps, num_top):
        model = nnx.merge(self.graphdef, params)
        B = state.tokens.shape[0]
        buf = ChunkOutput(
            tokens=jnp.full((B, num_steps), -1, jnp.int32),
            logprobs=jnp.zeros((B, num_steps), jnp.float32),
            top_ids=jnp.zeros((B, num_steps, num_top), jnp.int32),
            top_logprobs=jnp.zeros((B, num_steps, num_top), jnp.float32),
        )

        def cond(carry):
            step, state, _, _ = carry
            return (step < num_steps) & ~jnp.all(state.done)

        def body(carry):
            step, state, cache, buf = carry
            pos = jnp.where(state.done, -1, state.positions)  # done rows write nothing
            hidden, cache = model(state.tokens[:, None], pos[:, None], cache,
                                  backend=self.backend)
            out = sample(model.logits(hidden[:, 0]), sampling, state.penalties, state.output_pos,
                         num_top_logprobs=num_top)
            live = ~state.done
            tokens = jnp.where(live, out.tokens, -1)
            buf = ChunkOutput(
                tokens=buf.tokens.at[:, step].set(tokens),
                logprobs=buf.logprobs.at[:, step].set(out.logprobs),
                top_ids=buf.top_ids.at[:, step].set(out.top_ids),
                top_logprobs=buf.top_logprobs.at[:, step].set(out.top_logprobs),
            )
            output_pos = state.output_pos + live
            done = state.done | _stopped(out.tokens, sampling, state.output_pos) | (
                output_pos >= state.max_tokens)
            state = DecodeState(
                tokens=jnp.where(live, out.tokens, state.tokens),
                positions=state.positions + live,
                output_pos=output_pos,
                done=done,
                max_tokens=state.max_tokens,
                penalties=state.penalties.update(out.tokens, live),
            )
            return step + 1, state, cache, buf

        _, state, cache, buf = jax.lax.while_loop(cond, body, (0, state, cache, buf))
        return state, cache, buf


@functools.lru_cache(maxsize=16)
def runner_for(graphdef, backend: str) -> ModelRunner:
    """One runner (and so one set of compiled functions) per model structure and backend."""
    return ModelRunner(graphdef, backend)
