"""vSurge's scheduler: waiting queue -> decode slots, and the plan of each driver iteration. Plain
Python, no JAX.

NOTE: the one idea. Every iteration of the driver is "admit, prefill, decode": waiting requests
are admitted into free decode slots (all `n` sequences of a request together), prefilled in
batches of at most `max_concurrent_prefill` sequences, then one batched decode step advances every
live slot. `interleaved_mode` bounds how much prefill work runs before the next decode step:
- off (default): every admissible request is prefilled before decoding resumes: the best time to
  first token under a burst, at the price of a pause in running streams;
- on: at most one prefill batch per iteration, alternating with decode steps: running streams keep
  a steady inter-token latency, new requests wait a little longer for their first token.

The plan (`SchedulerOutput`) carries everything the device half (`vsurge_slots.SlotDevice`) needs:
the prefill batches with their slots, and for the decode chunk the slot owners, the rows freed on
the host since the last chunk (they stop computing), the moves that compact live slots to the
front, and how many cached positions each live row can see. `update(plan, out)` hands the sampled
tokens to the sequences and frees the slots of those that finished.
"""

from __future__ import annotations

import dataclasses

from workbench.engines.buckets import pick_bucket, pow2_buckets
from workbench.engines.engine_core import mark_running
from workbench.engines.request import Request, Sequence
from workbench.engines.request_queue import make_queue
from workbench.engines.sampled_tokens import append_sampled
from workbench.engines.slots import SlotTable
from workbench.engines.types import EngineOverloadedError


@dataclasses.dataclass
class Assignment:
    request: Request
    sequence: Sequence
    slot: int


@dataclasses.dataclass
class DecodePlan:
    """One decode chunk over the front rows that hold live slots."""

    owners: list  # [num_slots] Assignment | None per slot, after the moves
    stop_mask: list[bool] | None  # [num_slots] rows freed on the host stop computing (None: none)
    moves: list[tuple[int, int]]  # (src, dst) slot moves, applied before the chunk
    seen: list[int]  # per live row, the most cached positions it can see during the chunk


@dataclasses.dataclass
class SchedulerOutput:
    """The plan of one driver iteration."""

    prefill_batches: list[list[Assignment]]  # each batch runs as one padded prefill
    decode: DecodePlan | None  # one decode chunk over the live slots, or none
    events: list = dataclasses.field(default_factory=list)  # (request_id, event, info)

    @property
    def empty(self) -> bool:
        return not self.prefill_batches and self.decode is None

    num_steps: int = 1  # decode steps per chunk

    @property
    def num_tokens(self) -> int:
        """Prompt tokens prefilled plus the decode chunk's row-steps (at most)."""
        prompts = sum(len(a.request.prompt_ids) for b in self.prefill_batches for a in b)
        rows = len(self.decode.seen) * self.num_steps if self.decode is not None else 0
        return prompts + rows


class VSurgeScheduler:
    def __init__(self, *, num_slots: int, max_concurrent_prefill: int, interleaved: bool,
                 policy: str = "fcfs", max_waiting: int = 1024, decode_steps: int = 1,
                 row_buckets: tuple[int, ...] | None = None, cache_len: int | None = None):
        """`cache_len`: KV positions per slot (the engine's `max_model_len`), for the
        `kv_cache_usage_perc` gauge (cached positions of live slots / all slots' positions);
        None reports no KV usage."""
        if max_concurrent_prefill < 1:
            raise ValueError(f"max_concurrent_prefill must be >= 1, got {max_concurrent_prefill}")
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.slots = SlotTable(num_slots)
        self.waiting = make_queue(policy)
        self.max_concurrent_prefill = max_concurrent_prefill
        self.interleaved = interleaved
        self.max_waiting = max_waiting
        self.decode_steps = decode_steps
        self.row_buckets = tuple(row_buckets or pow2_buckets(1, num_slots))  # decode batch sizes
        self.cache_len = cache_len
        self.running: dict[str, Request] = {}
        self._freed = False  # slots freed on the host since the last decode chunk

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.running or len(self.waiting))

    def report(self, collector) -> None:
        collector.set_slots(self.slots.num_used, self.slots.num_slots)
        if self.cache_len:
            cached = sum(len(a.request.prompt_ids) + len(a.sequence.output_ids)
                         for _, a in self.slots.occupied())
            collector.set_kv_cache_usage(cached / (self.slots.num_slots * self.cache_len))

    def check_capacity(self, n: int, num_waiting: int | None = None) -> None:
        """Raise if a request with `n` sequences can never run or the queue is full.
        `num_waiting` counts requests not yet admitted (default: the queue's length)."""
        if n > self.slots.num_slots:
            raise ValueError(f"n={n} exceeds the engine's {self.slots.num_slots} decode slots")
        if (len(self.waiting) if num_waiting is None else num_waiting) >= self.max_waiting:
            raise EngineOverloadedError(
                f"waiting queue is full ({self.max_waiting} requests); retry later")

    def add(self, request: Request) -> None:
        self.waiting.push(request)

    def schedule(self) -> SchedulerOutput:
        """Admit waiting requests into free slots (strictly in queue order) and group their
        sequences into prefill batches of at most `max_concurrent_prefill`.

        Without interleaving, everything admitted now is prefilled before the next decode step,
        so the batches are formed by prompt length (shortest first): each batch pads to its
        longest prompt, and grouping similar lengths avoids padding a 20-token prompt to 250.
        Interleaved mode admits one batch per iteration, in queue order."""
        if self.interleaved:
            admitted = self._admit(limit=self.max_concurrent_prefill)
        else:
            admitted = sorted(self._admit(limit=None), key=lambda r: len(r[0].prompt_ids))
        batches: list[list[Assignment]] = []
        current: list[Assignment] = []
        for _, assignments in admitted:
            if current and len(current) + len(assignments) > self.max_concurrent_prefill:
                batches.append(current)
                current = []
            current.extend(assignments)
        if current:
            batches.append(current)
        events = [(r.request_id, "scheduled", {}) for r, _ in admitted]
        decode = self._plan_decode() if self.slots.num_used else None
        return SchedulerOutput(prefill_batches=batches, decode=decode, events=events,
                               num_steps=self.decode_steps)

    def _plan_decode(self) -> DecodePlan:
        owners = self.slots.snapshot()
        stop_mask = [o is None for o in owners] if self._freed else None
        self._freed = False
        # When the live slots fit a smaller decode batch than the one their positions span
        # (slots free up anywhere), move the stragglers to free slots at the front: a few live
        # requests then decode as a small batch instead of paying for all slots.
        live = [i for i, o in enumerate(owners) if o is not None]
        moves = []
        if live[-1] >= pick_bucket(len(live), self.row_buckets):
            moves = self.slots.compact(pick_bucket(len(live), self.row_buckets))
            owners = self.slots.snapshot()
        # Read only the cached positions the live rows can see this iteration. Past the host's
        # count, the device holds up to decode_steps + 1 unread tokens (a prefill's first token
        # and the chunk in flight), and this chunk caches decode_steps - 1 more before its last
        # step (each step's own token is attended fresh, not read from the cache).
        ahead = 2 * self.decode_steps - 1
        seen = [len(o.request.prompt_ids) + len(o.sequence.output_ids) + ahead
                for o in owners if o is not None]
        return DecodePlan(owners=owners, stop_mask=stop_mask, moves=moves, seen=seen)

    def update(self, plan: SchedulerOutput, out) -> list[tuple[Request, int]]:
        """Hand the sampled tokens of a dispatched plan to their sequences; `out` holds the
        host copies: `prefills` (one `[P]` sampler output per batch) and `decode` (a chunk
        `[B, N]`). Returns the requests that got tokens, with how many."""
        touched: dict[int, tuple[Request, int]] = {}

        def take(a: Assignment, tokens, lps, top_ids, top_lps) -> None:
            n = append_sampled(a.sequence, tokens, lps, top_ids, top_lps)
            if a.sequence.finished and self.free_sequence(a):
                self._freed = True
            if n:
                _, m = touched.get(id(a.request), (a.request, 0))
                touched[id(a.request)] = (a.request, m + n)

        for batch, host in zip(plan.prefill_batches, out.prefills):
            for i, a in enumerate(batch):
                take(a, host.tokens[i:i + 1], host.logprobs[i:i + 1], host.top_ids[i:i + 1],
                     host.top_logprobs[i:i + 1])
        if plan.decode is not None:
            host = out.decode
            # row i of the chunk is the slot the owner held when it was dispatched
            for i, a in enumerate(plan.decode.owners):
                if a is not None:
                    take(a, host.tokens[i], host.logprobs[i], host.top_ids[i],
                         host.top_logprobs[i])
        return list(touched.values())

    def _admit(self, limit: int | None) -> list[tuple[Request, list[Assignment]]]:
        """Pop requests from the queue head while their `n` sequences fit in free slots (and,
        with `limit`, in one prefill batch; a request larger than a batch goes alone)."""
        admitted, count = [], 0
        while len(self.waiting):
            req = self.waiting.peek()
            if len(req.sequences) > self.slots.num_free:
                break  # head of line waits for slots (keeps the priority order strict)
            if limit is not None and count and count + len(req.sequences) > limit:
                break
            self.waiting.pop()
            self.running[req.request_id] = req
            mark_running(req)
            assignments = []
            for seq in req.sequences:
                a = Assignment(req, seq, -1)
                a.slot = self.slots.allocate(a)
                assignments.append(a)
            admitted.append((req, assignments))
            count += len(assignments)
        return admitted

    def free_sequence(self, a: Assignment) -> bool:
        """Free the slot of a finished sequence (if it still holds it)."""
        if self.slots.owner(a.slot) is a:
            self.slots.free(a.slot)
            return True
        return False

    def finish(self, request_id: str) -> None:
        self.running.pop(request_id, None)

    finish_request = finish

    def abort(self, request_id: str) -> Request | None:
        """Remove a waiting request, or free the slots of a running one; returns it."""
        req = self.waiting.remove(request_id)
        if req is not None:
            return req
        req = self.running.pop(request_id, None)
        if req is None:
            return None
        for slot, owner in self.slots.occupied():
            if owner.request is req:
                self.slots.free(slot)
        self._freed = True
        return req
