"""eSurge's device half: the paged KV cache, per-row device state, and one jitted step over a flat
ragged batch. It is the runner of eSurge's `EngineCore`: `execute(plan)` dispatches one
`esurge_scheduler.ESurgePlan` (never waits), `fetch` brings its sampled tokens to the host.

A step: the plan's chunks become one packed int32 vector (`ragged_batch.build_step`, NumPy, one
transfer); the model runs the flat batch `[1, T]` over the paged cache (`PagedKVCache`, ragged
paged attention), then samples the last token of every chunk that reaches its sequence's end with
the shared sampler, each with its row's sampling parameters and penalty state.

Rows: a running sequence keeps one of `max_num_seqs` rows. A row holds its sampling parameters
(rebuilt on the host when rows change owner), its penalty state `[V]` (reset from the host's
tokens when a sequence with penalties is admitted or resumed) and its last sampled token, which
the next step reads on the device when the host has not seen it yet.

Compilation: the step compiles once per token bucket T (its per-sequence arrays have the fixed
size min(max_num_seqs, T)), plus one shape for the penalty-row reset. A request asking for top
logprobs, or with more logit_bias entries or stop ids than the default widths, compiles its own
sampler width when it comes. `precompile()` compiles the default set and returns it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workbench.engines.batching import prepare_request, top_logprob_width
from workbench.engines.buckets import pick_bucket
from workbench.engines.esurge_scheduler import ESurgePlan
from workbench.engines.ragged_batch import StepLayout, build_step
from workbench.loading.loader import LoadedModel, delete_arrays
from workbench.models.paged_attention import PagedAttentionMeta
from workbench.sampler import SamplerOutput, sample
from workbench.sampling_tensors import PenaltyState, SamplingTensors

QUERY_BLOCK = 16  # lane P query block (tokens)
TILE_KEYS = 64  # keys per attention tile: pages_per_tile = TILE_KEYS // page_size


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowState:
    last_tokens: jnp.ndarray  # [M] i32 each row's last sampled token
    penalties: PenaltyState  # [M, V]


@functools.lru_cache(maxsize=16)
def _compiled(graphdef, backend: str, kernel: str):
    """The jitted step and row reset for one model structure (shared by eSurge instances)."""

    def step(params, cache, state: RowState, sampling: SamplingTensors, packed, *,
             layout: StepLayout, num_top: int) -> tuple[SamplerOutput, object, RowState]:
        a = layout.unpack(packed)
        meta = PagedAttentionMeta.from_arrays(a, {"d": layout.lane_chunk("d"),
                                                  "p": layout.lane_chunk("p")})
        # a decode's input may be the row's last sampled token, not read back by the host yet
        ids = jnp.where(a["from_device"] == 1, state.last_tokens[a["device_row"]],
                        a["token_ids"])  # [T]
        model = nnx.merge(graphdef, params)
        cache = cache.for_step(a["slots"], meta, kernel)
        hidden, cache = model(ids[None], a["positions"][None], cache, backend=backend)  # [1, T, D]
        last = hidden[0, a["sample_idx"]]  # [R, D] each chunk's last token
        rows = a["rows"]  # [R]; pads: M (clipped on gathers, dropped on scatters)

        def take(x):
            return jnp.take(x, rows, axis=0, mode="clip")

        out = sample(model.logits(last), jax.tree.map(take, sampling),
                     jax.tree.map(take, state.penalties), a["output_pos"],
                     num_top_logprobs=num_top)  # [R]
        keep = jnp.where(a["samples"] == 1, rows, state.last_tokens.shape[0])
        penalties = state.penalties
        state = RowState(
            last_tokens=state.last_tokens.at[keep].set(out.tokens, mode="drop"),
            penalties=PenaltyState(counts=penalties.counts.at[keep, out.tokens].add(1, mode="drop"),
                                   prompt_mask=penalties.prompt_mask))
        return out, cache, state

    def set_row(state: RowState, row, prompt_mask, counts) -> RowState:
        """Row `row`'s penalty state from the host: prompt mask `[V]`, generated counts `[V]`."""
        return RowState(state.last_tokens, PenaltyState(
            counts=state.penalties.counts.at[row].set(counts, mode="drop"),
            prompt_mask=state.penalties.prompt_mask.at[row].set(prompt_mask, mode="drop")))

    return (jax.jit(step, donate_argnames=("cache", "state"),
                    static_argnames=("layout", "num_top")),
            jax.jit(set_row, donate_argnames=("state",)))


class ESurgeRunner:
    """See the module docstring."""

    def __init__(self, model: LoadedModel, *, num_pages: int, page_size: int, max_num_seqs: int,
                 max_model_len: int, token_buckets: tuple[int, ...],
                 attention_kernel: str = "xla"):
        self.model = model
        self.num_pages, self.page_size = num_pages, page_size
        self.max_num_seqs = max_num_seqs
        self.vocab_size = model.config.vocab_size
        self.eos_token_ids = sorted(model.eos_token_ids)
        self.token_buckets = tuple(token_buckets)
        self.layouts = {T: StepLayout(num_tokens=T, max_num_seqs=max_num_seqs,
                                      page_size=page_size, num_pages=num_pages,
                                      max_pages=math.ceil(max_model_len / page_size),
                                      query_block=QUERY_BLOCK,
                                      pages_per_tile=max(1, TILE_KEYS // page_size))
                        for T in self.token_buckets}
        self.step_fn, self.set_row_fn = _compiled(model.graphdef, model.attention_backend,
                                                  attention_kernel)
        self.cache = self.state = None
        self._row_params: list = [None] * max_num_seqs
        self._row_seeds: list[int] = [0] * max_num_seqs
        self._sampling: SamplingTensors | None = None

    # ---- the runner contract (engine_core.py) --------------------------------------------------
    def allocate(self) -> None:
        M, V = self.max_num_seqs, self.vocab_size
        self.cache = self.model.new_paged_cache(self.num_pages, self.page_size)
        self.state = RowState(jnp.zeros(M, jnp.int32),
                              PenaltyState(jnp.zeros((M, V), jnp.int32), jnp.zeros((M, V), bool)))
        self._row_params = [None] * M
        self._sampling = None

    def free(self) -> None:
        delete_arrays(self.cache, self.state, self._sampling)
        self.cache = self.state = self._sampling = None

    def prepare(self, request) -> None:
        """Check one request's inputs on the host before it joins a step."""
        prepare_request(request, self.eos_token_ids)

    def execute(self, plan: ESurgePlan) -> SamplerOutput:
        """Dispatch one step (nothing is waited for): row updates, then the step."""
        for row, params, seed in plan.new_rows:
            self._row_params[row], self._row_seeds[row] = params, seed
        if plan.new_rows or self._sampling is None:
            self._sampling = SamplingTensors.from_params(
                self._row_params, eos_token_ids=self.eos_token_ids, seeds=self._row_seeds)
        for row, prompt_ids, generated in plan.penalty_rows:
            mask = np.zeros(self.vocab_size, bool)
            mask[np.asarray(prompt_ids, np.int64)] = True
            counts = np.bincount(np.asarray(generated, np.int64),
                                 minlength=self.vocab_size).astype(np.int32)
            self.state = self.set_row_fn(self.state, np.int32(row), mask, counts)
        layout = self.layout_for(plan.num_tokens)
        num_top = top_logprob_width([c.seq.seq.params for c in plan.chunks if c.samples])
        out, self.cache, self.state = self.step_fn(
            self.model.state, self.cache, self.state, self._sampling,
            build_step(plan.chunks, layout), layout=layout, num_top=num_top)
        return out

    @staticmethod
    def fetch(out: SamplerOutput) -> SamplerOutput:
        return jax.device_get(out)

    # ---- shapes ---------------------------------------------------------------------------------
    def layout_for(self, num_tokens: int) -> StepLayout:
        return self.layouts[pick_bucket(num_tokens, self.token_buckets)]

    def precompile(self) -> list[dict]:
        """Run every step shape once on an all-padding batch (it writes nothing and samples for
        no row) and the penalty-row reset once (on no row); returns the shapes compiled, with
        seconds each. Needs the device state allocated and no step in flight."""
        if self._sampling is None:
            self._sampling = SamplingTensors.from_params(
                self._row_params, eos_token_ids=self.eos_token_ids, seeds=self._row_seeds)
        shapes = []
        for T, layout in self.layouts.items():
            t0 = time.perf_counter()
            out, self.cache, self.state = self.step_fn(
                self.model.state, self.cache, self.state, self._sampling,
                layout.pack(layout.empty()), layout=layout, num_top=0)
            jax.block_until_ready(out.tokens)
            shapes.append({"function": "step", "num_tokens": T, "num_seqs": layout.num_seqs,
                           "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        V = self.vocab_size
        self.state = self.set_row_fn(self.state, np.int32(self.max_num_seqs), np.zeros(V, bool),
                                     np.zeros(V, np.int32))
        jax.block_until_ready(self.state.last_tokens)
        shapes.append({"function": "set_penalty_row", "seconds": time.perf_counter() - t0})
        return shapes
