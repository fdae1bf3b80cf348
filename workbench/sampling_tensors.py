"""Device-side sampling inputs: per-row parameter arrays and per-row penalty state.

`SamplingTensors.from_params` turns a batch of `SamplingParams` (one per row, None = idle row)
into small numpy-built arrays that `workbench.sampler.sample` consumes. Variable-length fields
(logit_bias, stop ids, EOS ids) are padded with -1 to power-of-two widths so a long-running engine
sees only a handful of shapes, hence a handful of jit compilations.

Seeds: a row's 63-bit seed travels as a uint32 pair `[hi, lo]`, the key data of a threefry2x32
key, so `key_from_seed` is the same key as `jax.random.PRNGKey(seed)` with 64-bit mode on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.sampling_params import SamplingParams

MIN_BUCKET = 4


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(n, minimum, 1)
    return 1 << (n - 1).bit_length()


def seed_words(seed: int) -> tuple[int, int]:
    """(hi, lo) uint32 words of a seed in [0, 2**64)."""
    seed %= 2**64
    return seed >> 32, seed & 0xFFFFFFFF


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplingTensors:
    """Per-row sampling parameters for one batch. Idle / pad rows are greedy no-ops."""

    temperature: jnp.ndarray  # [B] f32; 0 = greedy
    top_k: jnp.ndarray  # [B] i32; 0 = disabled
    top_p: jnp.ndarray  # [B] f32; 1 = disabled
    min_p: jnp.ndarray  # [B] f32; 0 = disabled
    presence_penalty: jnp.ndarray  # [B] f32
    frequency_penalty: jnp.ndarray  # [B] f32
    repetition_penalty: jnp.ndarray  # [B] f32; 1 = disabled
    min_tokens: jnp.ndarray  # [B] i32; stop_ids masked while output_pos < min_tokens
    seed: jnp.ndarray  # [B, 2] uint32 (hi, lo) words of the row's seed
    bias_ids: jnp.ndarray  # [B, K] i32 logit_bias token ids, padded with -1
    bias_values: jnp.ndarray  # [B, K] f32 logit_bias values, padded with 0
    stop_ids: jnp.ndarray  # [B, S] i32 EOS ids + stop_token_ids, padded with -1
    eos_ids: jnp.ndarray  # [B, E] i32 EOS ids, padded with -1
    ignore_eos: jnp.ndarray  # [B] bool; True masks eos_ids for the whole generation

    @property
    def batch_size(self) -> int:
        return self.temperature.shape[0]

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams | None],
        *,
        eos_token_ids: Sequence[int],
        seeds: Sequence[int],
        pad_to: int | None = None,
    ) -> SamplingTensors:
        """The arrays of `host_arrays(...)` (same arguments), on the device."""
        arrays = cls.host_arrays(params, eos_token_ids=eos_token_ids, seeds=seeds, pad_to=pad_to)
        return cls(**{name: jnp.asarray(a) for name, a in arrays.items()})

    @staticmethod
    def host_arrays(
        params: Sequence[SamplingParams | None],
        *,
        eos_token_ids: Sequence[int],
        seeds: Sequence[int],
        pad_to: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Build the arrays on the host (numpy, no device work: an engine checks one request's
        inputs with it before batching, see `batching.prepare_request`).

        Args:
            params: one entry per row; None marks an idle row (greedy, no penalties).
            eos_token_ids: the model's EOS ids (shared by every row).
            seeds: one per entry of `params`: the seed of a row whose `params.seed` is None
                (a row's own `params.seed` takes precedence). Engines draw it once per request
                and pass the same value every step, so a request's tokens depend on its seed and
                output position only.
            pad_to: batch size to pad to with idle rows (default: len(params)).
        """
        if len(seeds) != len(params):
            raise ValueError(f"seeds must have one entry per row: {len(seeds)} != {len(params)}")
        b = len(params) if pad_to is None else pad_to
        if b < len(params):
            raise ValueError(f"pad_to={pad_to} is smaller than the batch ({len(params)} rows)")
        live = [p or SamplingParams(temperature=0.0) for p in params]
        eos = [int(i) for i in eos_token_ids]
        k = bucket(max((len(p.logit_bias or {}) for p in live), default=0))
        s = bucket(max((len(eos) + len(p.stop_token_ids or ()) for p in live), default=0))
        e = bucket(len(eos))

        temperature = np.zeros(b, np.float32)
        top_k = np.zeros(b, np.int32)
        top_p = np.ones(b, np.float32)
        min_p = np.zeros(b, np.float32)
        presence = np.zeros(b, np.float32)
        frequency = np.zeros(b, np.float32)
        repetition = np.ones(b, np.float32)
        min_tokens = np.zeros(b, np.int32)
        seed = np.zeros((b, 2), np.uint32)
        bias_ids = np.full((b, k), -1, np.int32)
        bias_values = np.zeros((b, k), np.float32)
        stop_ids = np.full((b, s), -1, np.int32)
        eos_ids = np.full((b, e), -1, np.int32)
        ignore_eos = np.zeros(b, bool)

        for row, (p, fallback_seed) in enumerate(zip(live, seeds)):
            temperature[row] = 0.0 if p.is_greedy else p.temperature
            top_k[row] = max(p.top_k, 0)
            top_p[row] = p.top_p
            min_p[row] = p.min_p
            presence[row] = p.presence_penalty
            frequency[row] = p.frequency_penalty
            repetition[row] = p.repetition_penalty
            min_tokens[row] = p.min_tokens
            seed[row] = seed_words(p.seed if p.seed is not None else int(fallback_seed))
            bias = p.logit_bias or {}
            bias_ids[row, : len(bias)] = list(bias.keys())
            bias_values[row, : len(bias)] = list(bias.values())
            stops = eos + list(p.stop_token_ids or ())
            stop_ids[row, : len(stops)] = stops
            eos_ids[row, : len(eos)] = eos
            ignore_eos[row] = p.ignore_eos

        arrays = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            presence_penalty=presence,
            frequency_penalty=frequency,
            repetition_penalty=repetition,
            min_tokens=min_tokens,
            seed=seed,
            bias_ids=bias_ids,
            bias_values=bias_values,
            stop_ids=stop_ids,
            eos_ids=eos_ids,
            ignore_eos=ignore_eos,
        )
        return arrays


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PenaltyState:
    """What the penalties need to know about each row's tokens so far."""

    counts: jnp.ndarray  # [B, V] i32 times each token was generated (prompt excluded)
    prompt_mask: jnp.ndarray  # [B, V] bool token occurs in the prompt

    @classmethod
    def init(
        cls, prompt_ids: Sequence[Sequence[int]], vocab_size: int, pad_to: int | None = None
    ) -> PenaltyState:
        """State before the first generated token; rows past len(prompt_ids) are empty."""
        b = len(prompt_ids) if pad_to is None else pad_to
        if b < len(prompt_ids):
            raise ValueError(f"pad_to={pad_to} is smaller than the batch ({len(prompt_ids)} rows)")
        prompt_mask = np.zeros((b, vocab_size), bool)
        for row, ids in enumerate(prompt_ids):
            ids = np.asarray(ids, np.int64)
            prompt_mask[row, ids[(ids >= 0) & (ids < vocab_size)]] = True
        return cls(
            counts=jnp.zeros((b, vocab_size), jnp.int32), prompt_mask=jnp.asarray(prompt_mask)
        )

    def update(self, tokens: jnp.ndarray, active: jnp.ndarray | None = None) -> PenaltyState:
        """Count one generated token per row: tokens `[B]` i32; rows with active `[B]` False
        (and tokens outside [0, V)) are left unchanged. Pure, jit-able."""
        b, v = self.counts.shape
        add = jnp.ones((b,), jnp.int32) if active is None else active.astype(jnp.int32)
        tokens = jnp.where((tokens >= 0) & (tokens < v), tokens, v)  # v: dropped
        counts = self.counts.at[jnp.arange(b), tokens].add(add, mode="drop")
        return PenaltyState(counts=counts, prompt_mask=self.prompt_mask)
