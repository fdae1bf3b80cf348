"""Host-side batch building shared by the engines: padded prefill inputs and per-row sampling
tensors (the way back, sampled arrays to sequences, is `sampled_tokens.py`)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from workbench.engines.buckets import pick_bucket
from workbench.engines.sampled_tokens import to_logprob  # noqa: F401 - re-exported
from workbench.sampling_params import SamplingParams
from workbench.sampling_tensors import PenaltyState, SamplingTensors


@dataclasses.dataclass
class PrefillBatch:
    """Right-padded prompts: row i holds prompt i at positions 0..n_i-1; pads have position -1."""

    ids: np.ndarray  # [B, T] i32
    positions: np.ndarray  # [B, T] i32; -1 = pad
    last_idx: np.ndarray  # [B] i32 index of each row's last prompt token
    sampling: SamplingTensors  # [B] rows
    penalties: PenaltyState  # [B, V]
    num_top: int  # static width of the top-logprobs buffers


def build_prefill_batch(prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
                        seeds: Sequence[int], *, batch_size: int, length: int,
                        eos_token_ids: Sequence[int], vocab_size: int) -> PrefillBatch:
    """Pad `prompts` to `[batch_size, length]`; extra rows are idle (greedy, all pads)."""
    ids = np.zeros((batch_size, length), np.int32)
    positions = np.full((batch_size, length), -1, np.int32)
    last_idx = np.zeros(batch_size, np.int32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
        positions[i, :len(p)] = np.arange(len(p))
        last_idx[i] = len(p) - 1
    sampling = SamplingTensors.from_params(list(params), eos_token_ids=sorted(eos_token_ids),
                                           seeds=list(seeds), pad_to=batch_size)
    penalties = PenaltyState.init(prompts, vocab_size, pad_to=batch_size)
    return PrefillBatch(ids, positions, last_idx, sampling, penalties, top_logprob_width(params))


def top_logprob_width(params: Sequence[SamplingParams]) -> int:
    """Static width K of the top-logprobs buffers for a batch (0, 1, 5 or 20)."""
    k = max((p.top_logprobs for p in params if p.logprobs), default=0)
    return 0 if k == 0 else pick_bucket(k, (1, 5, 20))




def prepare_request(request, eos_token_ids: Sequence[int]) -> None:
    """Build one request's sampling rows on the host, in numpy (every sequence's parameters turned
    into the device's dtypes; nothing is compiled or transferred), so a request whose inputs cannot be prepared fails alone, before it joins a
    batch (the runners' `prepare`, see `engine_core.py`)."""
    seqs = request.sequences
    SamplingTensors.host_arrays([s.params for s in seqs], eos_token_ids=eos_token_ids,
                                seeds=[s.seed for s in seqs])
