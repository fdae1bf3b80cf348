"""eSurge's scheduler: one token budget per step shared by decodes and prompt chunks, pages from the
`KVCacheManager`, preemption by recompute. Plain Python, no JAX.

NOTE: the one idea. There is no prefill phase and no decode phase (see `seq_state.py`): each step
gives every scheduled sequence a chunk of its uncomputed tokens, at most `max_num_batched_tokens`
in all and `max_num_seqs` sequences, and the device runs them as one flat ragged batch.
`schedule()` fills the budget in this order:

1. running sequences: decodes first (one token each, so a long prompt never stalls the streams),
   then prompt chunks (a prompt longer than the budget is split over steps: chunked prefill);
2. waiting sequences, by policy (`fcfs`; `priority`: lower value first, ties by arrival), while
   rows, budget and pages last, and only in a step that preempted nobody;
3. what is left of the budget: longer chunks for the prompts capped above, then more waiting
   sequences, past the long-prompt limits (nothing is waiting for that budget any more).

When pages run out, the lowest-priority (then latest) running sequence is preempted by recompute:
its pages return to the pool, it goes back to the waiting queue at its original place (ahead of
later arrivals of its priority) with its generated tokens, and it resumes by recomputing them, with
its sampling state rebuilt (penalty counts from its tokens; a seeded draw depends on the output
position only), so its tokens do not change. Its own cached blocks make the recompute cheap, and
they are not counted as prefix-cache hits.

Shared prefixes: a page is cached once the step computing it is dispatched, so sequences admitted
together would all compute a prefix they share. A waiting sequence whose next uncached block is
being computed by a running one waits for it instead (a step or a few), then finds it cached.

Long prompts: when prompt chunks compete, one chunk takes at most `long_prefill_token_threshold`
tokens, and at most `max_num_partial_prefills` prompts are prefilled across steps at once, so
one long prompt cannot hold back short requests' first tokens. These limits only order the work:
budget they leave unused at the end of a step goes to the prompts they held back (3.), so a
burst of long prompts still fills every step. Tenants (`tenants.py`): an
optional cap on running sequences per tenant, and a fair split of the prefill budget and of
free rows between tenants with waiting work.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools

from workbench.engines.buckets import (
    MAX_BATCHED_TOKENS,
    check_count,
    check_rows,
    is_int,
)
from workbench.engines.kv_cache_manager import KVCacheManager
from workbench.engines.request import Request
from workbench.engines.request_queue import make_keyed_queue
from workbench.engines.sampled_tokens import append_sampled
from workbench.engines.seq_state import SeqState
from workbench.engines.tenants import fair_order, fair_shares
from workbench.engines.types import EngineOverloadedError, RequestStatus


@dataclasses.dataclass
class Chunk:
    """One sequence's part of a step: `num_tokens` tokens from position `start`."""

    seq: SeqState
    row: int  # the sequence's persistent row (sampling parameters, penalties, last token)
    start: int
    num_tokens: int
    token_ids: list[int]  # [num_tokens]; a `from_device` chunk holds [0]
    from_device: bool  # the one input token is the row's last sampled token, still on the device
    samples: bool  # the chunk reaches the last token: sample the next one
    output_pos: int  # tokens generated before the one sampled here (seed key, min_tokens)
    page_ids: list[int]  # the sequence's pages, in position order


@dataclasses.dataclass
class ESurgePlan:
    """What the runner needs for one step."""

    chunks: list[Chunk]
    new_rows: list[tuple[int, object, int]]  # (row, SamplingParams, seed) of admitted sequences
    penalty_rows: list[tuple[int, list[int], list[int]]]  # (row, prompt ids, generated ids)
    events: list  # (request_id, event, info)

    @property
    def empty(self) -> bool:
        return not self.chunks

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class _Step:
    """The state of one `schedule()` call."""

    def __init__(self, budget: int):
        self.budget = budget
        self.scheduled: dict[int, tuple[SeqState, int]] = {}  # id(seq) -> (seq, num_tokens)
        self.pending: set[bytes] = set()  # hashes of full blocks computed, not yet cached
        self.preempted: set[int] = set()
        self.events: list = []
        self.new_rows: list = []
        self.penalty_rows: list = []
        self.num_partial = 0


class ESurgeScheduler:
    def __init__(self, kv: KVCacheManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 policy: str = "fcfs", long_prefill_token_threshold: int | None = None,
                 max_num_partial_prefills: int = 1, max_waiting: int = 1024,
                 max_running_per_tenant: int | None = None, tenant_fair_share: bool = True):
        max_num_seqs = check_rows("max_num_seqs", max_num_seqs)
        max_num_batched_tokens = check_count("max_num_batched_tokens", max_num_batched_tokens,
                                             MAX_BATCHED_TOKENS)
        for name, value in (("max_num_partial_prefills", max_num_partial_prefills),
                            ("max_waiting", max_waiting)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, value in (("long_prefill_token_threshold", long_prefill_token_threshold),
                            ("max_running_per_tenant", max_running_per_tenant)):
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        self.kv = kv
        self.policy = policy
        self.waiting = make_keyed_queue(policy)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.long_prefill_token_threshold = long_prefill_token_threshold or max(
            1, max_num_batched_tokens // 4)
        self.max_num_partial_prefills = max_num_partial_prefills
        self.max_waiting = max_waiting
        self.max_running_per_tenant = max_running_per_tenant
        self.tenant_fair_share = tenant_fair_share
        self.running: list[SeqState] = []  # in admission order
        self.seqs: dict[str, list[SeqState]] = {}  # request id -> its sequences
        self._free_rows = list(range(max_num_seqs))  # a heap: the lowest free row first
        self._arrival = itertools.count()
        self.num_preemptions = 0

    # ---- the core's contract --------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        """Requests with a running sequence."""
        return len({s.request.request_id for s in self.running})

    @property
    def num_waiting(self) -> int:
        return len(self.seqs) - self.num_running

    @property
    def has_work(self) -> bool:
        return bool(self.running or len(self.waiting))

    def report(self, collector) -> None:
        collector.set_kv_cache_usage(self.kv.pool.usage)
        collector.set_slots(len(self.running), self.max_num_seqs)

    def check_capacity(self, n: int, num_waiting: int | None = None) -> None:
        if n > self.max_num_seqs:
            raise ValueError(f"n={n} exceeds the engine's {self.max_num_seqs} sequences "
                             "(max_num_seqs)")
        if (self.num_waiting if num_waiting is None else num_waiting) >= self.max_waiting:
            raise EngineOverloadedError(
                f"waiting queue is full ({self.max_waiting} requests); retry later")

    def add(self, request: Request) -> None:
        seqs = [SeqState(request, seq, next(self._arrival)) for seq in request.sequences]
        self.seqs[request.request_id] = seqs
        for s in seqs:
            self.waiting.push(s)

    def abort(self, request_id: str) -> Request | None:
        seqs = self.seqs.pop(request_id, None)
        for s in seqs or ():
            self._release(s)
        return seqs[0].request if seqs else None

    def finish(self, request_id: str) -> None:
        self.abort(request_id)

    def reset_prefix_cache(self) -> int:
        return self.kv.reset_prefix_cache()

    # ---- scheduling -----------------------------------------------------------------------------
    def _order_key(self, s: SeqState) -> tuple[int, int]:
        """Best first; `max` of it picks the preemption victim."""
        return (s.priority if self.policy == "priority" else 0, s.arrival)

    def schedule(self) -> ESurgePlan:
        step = _Step(self.max_num_batched_tokens)
        order = sorted((s for s in self.running if not s.done_sampling), key=self._order_key)
        for s in [s for s in order if s.num_new_tokens == 1]:  # decodes
            if step.budget == 0:
                break
            if id(s) not in step.preempted and self._allocate(s, 1, step):
                step.scheduled[id(s)] = (s, 1)
                step.budget -= 1
        prefills = [s for s in order if s.num_new_tokens > 1]
        candidates = self._waiting_candidates() if not step.preempted else []
        cap = (self.long_prefill_token_threshold if len(prefills) + len(candidates) > 1
               else step.budget)
        demands = collections.Counter()
        for s in prefills + candidates:
            demands[s.tenant] += min(s.num_new_tokens, cap)
        shares = (fair_shares(dict(demands), step.budget) if self.tenant_fair_share
                  else collections.defaultdict(lambda: step.budget))
        for s in prefills:
            n = min(s.num_new_tokens, step.budget, cap, shares[s.tenant])
            if n <= 0 or id(s) in step.preempted:
                continue
            if self._allocate(s, n, step):
                step.scheduled[id(s)] = (s, n)
                step.budget -= n
                shares[s.tenant] -= n
                step.num_partial += n < s.num_new_tokens
        if not step.preempted:
            if self.kv.enable_prefix_caching:
                for s in self.running:
                    step.pending.update(self._pending_blocks(s, step))
            self._admit(candidates, cap, shares, step)
            if step.budget:
                self._fill(prefills + candidates, step)
        return self._plan(step)

    def _fill(self, seqs: list[SeqState], step: _Step) -> None:
        """Give the budget left over to prompt chunks: first longer chunks for scheduled ones,
        then waiting sequences the limits held back (no preemption for this budget)."""
        for s in seqs:
            if step.budget == 0:
                return
            if id(s) not in step.scheduled or id(s) in step.preempted:
                continue
            n = step.scheduled[id(s)][1]
            more = min(s.num_new_tokens - n, step.budget)
            if more > 0 and self.kv.allocate_slots(s, n + more) is not None:
                step.scheduled[id(s)] = (s, n + more)
                step.budget -= more
        waiting = [s for s in seqs if id(s) not in step.scheduled and s.row is None]
        unlimited = collections.defaultdict(lambda: self.max_num_batched_tokens)
        self._admit(waiting, self.max_num_batched_tokens, unlimited, step, limit_partial=False)

    def _pending_blocks(self, s: SeqState, step: _Step) -> list[bytes]:
        """Hashes of the full blocks of known tokens `s` computes in this step or computed in
        one not yet cached (they are cached from the next step on)."""
        n = step.scheduled.get(id(s), (s, 0))[1]
        done = min(s.num_computed_tokens + n, s.num_known_tokens) // self.kv.page_size
        hashes = s.update_hashes(self.kv.page_size)
        return [h for h in hashes[:done] if self.kv.pool.get_cached(h) is None]

    def _allocate(self, s: SeqState, n: int, step: _Step) -> bool:
        """Pages for `n` more tokens of running `s`, preempting others (or `s` itself: False)."""
        while self.kv.allocate_slots(s, n) is None:
            victim = max((r for r in self.running if id(r) not in step.preempted),
                         key=self._order_key)
            self._preempt(victim, step)
            if victim is s:
                return False
        return True

    def _preempt(self, s: SeqState, step: _Step) -> None:
        if id(s) in step.scheduled:  # scheduled earlier in this step: give its tokens back
            step.budget += step.scheduled.pop(id(s))[1]
        step.preempted.add(id(s))
        self.running.remove(s)
        self.kv.free(s)
        self._free_row(s)
        s.num_computed_tokens = 0
        s.num_preemptions += 1
        s.seq.status = RequestStatus.PREEMPTED
        self.waiting.push(s)
        self.num_preemptions += 1
        step.events.append((s.request.request_id, "preempted",
                            {"index": s.seq.index, "num_tokens": s.num_tokens}))

    def _waiting_candidates(self) -> list[SeqState]:
        """Waiting sequences in admission order (fair between tenants when enabled), within
        the per-tenant cap; at most as many as there are free rows."""
        items = list(self.waiting)
        running = collections.Counter(s.tenant for s in self.running)
        if self.tenant_fair_share:
            items = fair_order(items, lambda s: s.tenant, running)
        out = []
        for s in items:
            if len(out) == len(self._free_rows):
                break
            cap = self.max_running_per_tenant
            if cap is not None and running[s.tenant] >= cap:
                continue
            running[s.tenant] += 1
            out.append(s)
        return out

    def _admit(self, candidates: list[SeqState], cap: int, shares, step: _Step,
               limit_partial: bool = True) -> None:
        for s in candidates:
            if step.budget == 0 or not self._free_rows:
                break
            computed, hit = self.kv.get_computed_blocks(s)
            hashes, most = s.block_hashes, (s.num_tokens - 1) // self.kv.page_size
            if len(computed) < min(most, len(hashes)) and hashes[len(computed)] in step.pending:
                continue  # its next block is being computed by another sequence: wait for it
            need = s.num_tokens - hit
            n = min(need, step.budget, cap, shares[s.tenant])
            if n <= 0:
                continue
            if limit_partial and n < need and step.num_partial >= self.max_num_partial_prefills:
                continue  # another long prompt is being prefilled: this one waits
            if self.kv.allocate_slots(s, n, computed, hit) is None:
                break  # out of pages: admit nothing more (queue order stays strict)
            self.waiting.remove(s.request_id)
            s.num_computed_tokens = hit
            s.row = heapq.heappop(self._free_rows)
            s.seq.status = RequestStatus.RUNNING
            self.running.append(s)
            rid = s.request.request_id
            step.events.append((rid, "resumed" if s.scheduled_once else "scheduled",
                                {"index": s.seq.index}))
            s.scheduled_once = True
            queries, hits = self.kv.record_lookup(s, hit)
            if queries:
                step.events.append((rid, "prefix_lookup", {"queries": queries, "hits": hits}))
            step.new_rows.append((s.row, s.seq.params, s.seq.seed))
            if s.uses_penalties:
                step.penalty_rows.append((s.row, s.request.prompt_ids, list(s.seq.output_ids)))
            step.scheduled[id(s)] = (s, n)
            step.budget -= n
            shares[s.tenant] -= n
            step.num_partial += n < need
            if self.kv.enable_prefix_caching:
                step.pending.update(self._pending_blocks(s, step))

    def _plan(self, step: _Step) -> ESurgePlan:
        chunks = []
        for s, n in step.scheduled.values():
            start = s.num_computed_tokens
            from_device = start >= s.num_known_tokens  # the input is the in-flight token
            assert not from_device or n == 1, f"{s}: a device-side input in a {n}-token chunk"
            samples = start + n == s.num_tokens
            chunks.append(Chunk(
                seq=s, row=s.row, start=start, num_tokens=n,
                token_ids=[0] if from_device else s.token_ids(start, start + n),
                from_device=from_device, samples=samples,
                output_pos=len(s.seq.output_ids) + s.num_inflight,
                page_ids=self.kv.page_ids(s)))
            if n > 1 or start < s.num_prompt_tokens:
                step.events.append((s.request.request_id, "prefill_chunk",
                                    {"index": s.seq.index, "start": start, "num_tokens": n}))
            s.num_computed_tokens += n
            s.num_inflight += samples
        return ESurgePlan(chunks, step.new_rows, step.penalty_rows, step.events)

    # ---- results --------------------------------------------------------------------------------
    def update(self, plan: ESurgePlan, out) -> list[tuple[Request, int]]:
        """Hand the tokens sampled by a dispatched plan (`out`: host arrays `[R]`, row i for
        chunk i) to their sequences; release the sequences that finished."""
        touched: dict[str, tuple[Request, int]] = {}
        for i, c in enumerate(plan.chunks):
            if not c.samples:
                continue
            s = c.seq
            s.num_inflight -= 1
            n = append_sampled(s.seq, out.tokens[i:i + 1], out.logprobs[i:i + 1],
                               out.top_ids[i:i + 1], out.top_logprobs[i:i + 1])
            if n:
                rid = s.request.request_id
                touched[rid] = (s.request, touched.get(rid, (None, 0))[1] + n)
            if s.seq.finished:
                self._release(s)
        return list(touched.values())

    def _release(self, s: SeqState) -> None:
        """Take a sequence out of scheduling (finished or aborted); idempotent."""
        if s in self.running:
            self.running.remove(s)
        else:
            self.waiting.remove(s.request_id)
        self.kv.free(s)
        self._free_row(s)

    def _free_row(self, s: SeqState) -> None:
        if s.row is not None:
            heapq.heappush(self._free_rows, s.row)
            s.row = None
