"""vSurge's device half: the decode slots' KV cache and decode state, and the jitted calls on them.

`SlotDevice` owns the arrays of `num_slots` decode slots (a contiguous KV cache of `num_slots` x
`max_model_len` positions and the per-row `DecodeState`) and dispatches, never waits. It is the
runner of vSurge's `EngineCore`: `execute(plan)` runs a `vsurge_scheduler.SchedulerOutput` (its
prefills, then the decode chunk after the plan's stop mask and moves) through these calls, and
`fetch` brings the sampled tokens to the host:

- `prefill(batch)`: a padded prefill of a few admitted requests, written straight into their slots;
- `decode(owners, seen)`: `decode_steps` steps over the front rows that hold live slots, reading
  only the cached positions they can see (`decode_reads.py`);
- `move(moves)`: move decode rows (cache and state) between slots, to compact live slots forward;
- `stop_rows(mask)`: rows the host freed (stop strings, aborts) stop computing;
- `precompile(...)`: every shape the above can take, on a scratch cache.

What to run, and when, is the scheduler's business (`vsurge_scheduler.py`): this module holds no
queues and no requests, only `Assignment`s (request, sequence, slot) handed in by the plan.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench import distributed
from workbench.engines.batching import build_prefill_batch, prepare_request, top_logprob_width
from workbench.engines.buckets import pick_bucket
from workbench.engines.decode_reads import DecodeReads
from workbench.engines.model_runner import ChunkOutput, DecodeState, ModelRunner
from workbench.engines.vsurge_scheduler import Assignment, SchedulerOutput
from workbench.loading.loader import delete_arrays
from workbench.sampler import SamplerOutput
from workbench.sampling_params import SamplingParams
from workbench.sampling_tensors import PenaltyState, SamplingTensors


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotOutput:
    """What one plan produced: a sampler output `[P]` per prefill batch, a decode chunk `[B, N]`."""

    prefills: list
    decode: ChunkOutput | None


class SlotDevice:
    """The slots' device arrays and the calls that advance them; see the module docstring."""

    skip_aborted = True  # leave requests with a queued abort out of a step (see execute)

    def __init__(self, model, runner: ModelRunner, reads: DecodeReads, *, num_slots: int,
                 max_model_len: int, decode_steps: int, row_buckets: Sequence[int],
                 batch_buckets: Sequence[int], prefill_buckets: Sequence[int],
                 eos_token_ids):
        self.model, self.runner, self.reads = model, runner, reads
        self.num_slots, self.max_model_len = num_slots, max_model_len
        self.decode_steps = decode_steps
        self.row_buckets, self.batch_buckets = tuple(row_buckets), tuple(batch_buckets)
        self.prefill_buckets = tuple(prefill_buckets)
        self.eos_token_ids = eos_token_ids
        self.cache = self.state = None
        self._sampling: SamplingTensors | None = None  # the decode rows' sampling parameters
        self._sampling_owners: list | None = None  # ... built for these slot owners
        self._num_top = 0
        self.num_rows = num_slots  # rows the last decode dispatch computed

    # ---- arrays --------------------------------------------------------------------------------
    def idle_state(self) -> DecodeState:
        """A decode state with every row done (idle slots compute nothing)."""
        B, V = self.num_slots, self.model.config.vocab_size
        return DecodeState(
            tokens=jnp.zeros(B, jnp.int32), positions=jnp.zeros(B, jnp.int32),
            output_pos=jnp.zeros(B, jnp.int32), done=jnp.ones(B, bool),
            max_tokens=jnp.ones(B, jnp.int32),
            penalties=PenaltyState(jnp.zeros((B, V), jnp.int32), jnp.zeros((B, V), bool)))

    def allocate(self) -> None:
        self.cache = self.model.new_cache(self.num_slots, self.max_model_len)
        self.state = self.idle_state()
        self._sampling = self._sampling_owners = None

    def free(self) -> None:
        delete_arrays(self.cache, self.state)
        self.cache = self.state = self._sampling = self._sampling_owners = None

    # ---- the runner contract (engine_core.py) --------------------------------------------------
    def prepare(self, request) -> None:
        """Check one request's inputs on the host before it joins a batch."""
        prepare_request(request, self.eos_token_ids)

    def execute(self, plan: SchedulerOutput) -> "SlotOutput":
        """Dispatch a plan: its prefills, then its decode chunk (after the plan's stop mask and
        slot moves). Nothing is waited for.

        A sequence whose request has an abort queued (`abort_requested`) when its prefill batch
        is dispatched is left out of the batch (the plan's batches are updated to match, so
        `update` sees only what ran) and its slot's row is stopped; a decode chunk whose every
        row has an abort queued is not dispatched (the plan's `decode` becomes None). After a
        flood of cancelled requests, the driver thus neither computes nor compiles new batch
        shapes for clients that are gone. Each batch is checked just before its dispatch, so
        aborts that arrive while an earlier batch compiles still count. On a multi-host mesh
        (`skip_aborted` False) every process dispatches the plan as it is: a follower cannot see
        the leader's aborts."""
        gone = (lambda a: a.request.abort_requested) if self.skip_aborted else (lambda a: False)
        prefills, kept, skipped = [], [], []
        for batch in plan.prefill_batches:
            live = [a for a in batch if not gone(a)]
            skipped += [a for a in batch if gone(a)]
            if live:
                kept.append(live)
                prefills.append(self.prefill(live))
        plan.prefill_batches[:] = kept
        chunk = None
        if plan.decode is not None:
            if plan.decode.stop_mask is not None:
                self.stop_rows(np.asarray(plan.decode.stop_mask))
            if plan.decode.moves:
                self.move(plan.decode.moves)
            if skipped:
                mask = np.zeros(self.num_slots, bool)
                mask[[a.slot for a in skipped]] = True
                self.stop_rows(mask)
            if all(a is None or gone(a) for a in plan.decode.owners):
                plan.decode = None  # every row's client is gone
            else:
                chunk = self.decode(plan.decode.owners, plan.decode.seen)
        return SlotOutput(prefills=prefills, decode=chunk)

    @staticmethod
    def fetch(out: "SlotOutput") -> "SlotOutput":
        """The plan's sampled tokens on the host (one transfer; blocks until they exist;
        gathered across processes when the batch is split over them)."""
        return distributed.to_host(out)

    # ---- dispatches ------------------------------------------------------------------------------
    def prefill(self, batch: list[Assignment]) -> SamplerOutput:
        """Prefill `batch` (padded to a batch and a prompt-length bucket) into its slots; returns
        the first sampled tokens (not waited for)."""
        params = [a.sequence.params for a in batch]
        out, self.cache, self.state = self._prefill_into(
            self.cache, self.state, [a.request.prompt_ids for a in batch], params,
            [a.sequence.seed for a in batch], [a.slot for a in batch],
            [p.max_tokens for p in params])
        return out

    def _prefill_into(self, cache, state, prompts, params, seeds, slots, max_tokens):
        """The jitted prefill of `prompts` into `slots` of (cache, state), padded to a batch
        bucket (pad rows go nowhere) and a prompt-length bucket: `prefill` and `precompile`
        build their calls here, so they compile the same shapes."""
        P = pick_bucket(len(prompts), self.batch_buckets)
        b = build_prefill_batch(
            prompts, params, seeds, batch_size=P,
            length=pick_bucket(max(map(len, prompts)), self.prefill_buckets),
            eos_token_ids=self.eos_token_ids, vocab_size=self.model.config.vocab_size)
        pad = P - len(prompts)
        slots = np.array(list(slots) + [self.num_slots] * pad, np.int32)
        max_tokens = np.array(list(max_tokens) + [1] * pad, np.int32)
        return self.runner.prefill_into_slots(
            self.model.state, cache, state, b.ids, b.positions, b.last_idx, slots, b.sampling,
            b.penalties.prompt_mask, max_tokens, num_top=b.num_top)

    def stop_rows(self, mask: np.ndarray) -> None:
        """Rows where `mask` `[num_slots]` is true are done from the next step on."""
        self.state = dataclasses.replace(self.state, done=self.state.done | mask)

    def move(self, moves: list[tuple[int, int]]) -> None:
        """Move rows `src -> dst` (cache and decode state); sources become done. The move list is
        padded to a row bucket with out-of-range entries, so few shapes compile."""
        m = pick_bucket(len(moves), self.row_buckets)
        src = np.full(m, self.num_slots, np.int32)
        dst = np.full(m, self.num_slots, np.int32)
        src[: len(moves)], dst[: len(moves)] = zip(*moves)
        self.cache, self.state = self.runner.move_rows(self.cache, self.state, src, dst)

    def decode(self, owners: list[Assignment | None], seen: Sequence[int]) -> ChunkOutput:
        """`decode_steps` steps over the front rows holding live slots (`owners[i]` is slot i's
        assignment or None; slots fill lowest-first), each live row reading at most `seen`
        cached positions. Returns the chunk's tokens (not waited for)."""
        if owners != self._sampling_owners:
            last = max(i for i, o in enumerate(owners) if o is not None)
            self.num_rows = pick_bucket(last + 1, self.row_buckets)
            rows = owners[: self.num_rows]
            params = [o.sequence.params if o is not None else None for o in rows]
            self._sampling = self._decode_sampling(
                params, [o.sequence.seed if o is not None else 0 for o in rows])
            self._sampling_owners = owners
            self._num_top = top_logprob_width([p for p in params if p is not None])
        self.state, cache, chunk = self.runner.decode_loop(
            self.model.state, self.reads.apply(self.cache, seen, self.num_rows), self.state,
            self._sampling, num_steps=self.decode_steps, num_top=self._num_top,
            num_rows=self.num_rows)
        self.cache = self.reads.reset(cache)
        return chunk

    def _decode_sampling(self, params: list, seeds: list[int]) -> SamplingTensors:
        """Sampling tensors of the decode rows (None params: an idle row)."""
        return SamplingTensors.from_params(params, eos_token_ids=sorted(self.eos_token_ids),
                                           seeds=seeds)

    # ---- compilation ---------------------------------------------------------------------------
    def shapes(self, max_prompt_len: int) -> list[dict]:
        """Every program `prefill`, `decode` and `move` can dispatch for prompts up to
        `max_prompt_len` (default sampling): a prefill per (batch bucket, prompt bucket <= the
        bucket of `max_prompt_len`), a decode chunk per (row bucket, read size), a move per row
        bucket. Each is {"function", "batch", "length"}: a prefill's prompt bucket, a decode
        chunk's read size, 0 for a move."""
        top = pick_bucket(max_prompt_len, self.prefill_buckets)
        shapes = [dict(function="prefill", batch=P, length=T)
                  for T in self.prefill_buckets if T <= top for P in self.batch_buckets]
        for R in self.row_buckets:
            shapes += [dict(function="decode", batch=R, length=size)
                       for size in self.reads.sizes(R, self.max_model_len)]
            shapes.append(dict(function="move", batch=R, length=0))
        return shapes

    def precompile(self, max_prompt_len: int) -> dict:
        """Run every shape of `shapes(max_prompt_len)` once, on a scratch cache and state (freed
        after). Returns {"prefill": count, "decode": count, "shapes": the shapes,
        "seconds": wall seconds}."""
        t0 = time.perf_counter()
        B = self.num_slots
        sp = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
        cache, state = self.model.new_cache(B, self.max_model_len), self.idle_state()
        shapes = self.shapes(max_prompt_len)
        for shape in shapes:
            kind, R, n = shape["function"], shape["batch"], shape["length"]
            if kind == "prefill":  # R prompts of n tokens, into no slot (out of range)
                out, cache, state = self._prefill_into(cache, state, [[1] * n] * R, [sp] * R,
                                                       [0] * R, [B] * R, [1] * R)
                jax.block_until_ready(out.tokens)
            elif kind == "decode":  # every row done: the loop compiles, then exits at once
                sampling = self._decode_sampling([sp] + [None] * (R - 1), [0] * R)
                state, cache, chunk = self.runner.decode_loop(
                    self.model.state, self.reads.with_size(cache, n), state, sampling,
                    num_steps=self.decode_steps, num_top=0, num_rows=R)
                cache = self.reads.reset(cache)
                jax.block_until_ready(chunk.tokens)
            else:  # out-of-range indices move nothing
                nowhere = np.full(R, B, np.int32)
                cache, state = self.runner.move_rows(cache, state, nowhere, nowhere)
        delete_arrays(cache, state)
        count = {k: sum(s["function"] == k for s in shapes) for k in ("prefill", "decode")}
        return {**count, "shapes": shapes, "seconds": time.perf_counter() - t0}
