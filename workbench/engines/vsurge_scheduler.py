"""vSurge's scheduler: waiting queue -> decode slots. Plain Python, no JAX.

NOTE: the one idea. Every iteration of the driver is "admit, prefill, decode": waiting requests
are admitted into free decode slots (all `n` sequences of a request together), prefilled in
batches of at most `max_concurrent_prefill` sequences, then one batched decode step advances every
live slot. `interleaved_mode` bounds how much prefill work runs before the next decode step:
- off (default): every admissible request is prefilled before decoding resumes: the best time to
  first token under a burst, at the price of a pause in running streams;
- on: at most one prefill batch per iteration, alternating with decode steps: running streams keep
  a steady inter-token latency, new requests wait a little longer for their first token.
"""

from __future__ import annotations

import dataclasses

from workbench.engines.request import Request, Sequence
from workbench.engines.request_queue import make_queue
from workbench.engines.slots import SlotTable
from workbench.engines.types import EngineOverloadedError


@dataclasses.dataclass
class Assignment:
    request: Request
    sequence: Sequence
    slot: int


@dataclasses.dataclass
class SchedulerOutput:
    """The plan of one driver iteration."""

    prefill_batches: list[list[Assignment]]  # each batch runs as one padded prefill
    decode: bool  # run one decode step over the live slots


class VSurgeScheduler:
    def __init__(self, *, num_slots: int, max_concurrent_prefill: int, interleaved: bool,
                 policy: str = "fcfs", max_waiting: int = 1024):
        if max_concurrent_prefill < 1:
            raise ValueError(f"max_concurrent_prefill must be >= 1, got {max_concurrent_prefill}")
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.slots = SlotTable(num_slots)
        self.waiting = make_queue(policy)
        self.max_concurrent_prefill = max_concurrent_prefill
        self.interleaved = interleaved
        self.max_waiting = max_waiting
        self.running: dict[str, Request] = {}

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

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
        return SchedulerOutput(prefill_batches=batches, decode=bool(self.slots.num_used))

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

    def finish_request(self, request_id: str) -> None:
        self.running.pop(request_id, None)

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
        return req
