"""A simulated device for eSurge's host side: pages hold token ids instead of keys and values, and
a sequence's next token is a function of the ids it reads back from its own pages, so a wrong page
table, a lost write or a wrong recompute changes the tokens (as it would change a model's)."""

from __future__ import annotations

import types
import zlib

import numpy as np

from workbench.engines.request import Request
from workbench.sampling_params import SamplingParams

EOS = 0
VOCAB = 40


def next_token(context: list[int], output_pos: int) -> int:
    """The simulated model: any function of the whole context works."""
    return zlib.crc32(np.asarray(context, np.int64).tobytes() + bytes([output_pos % 256])) % VOCAB


def reference(prompt: list[int], max_tokens: int) -> list[int]:
    """What a sequence generates, scheduled however: greedy over `next_token` until EOS."""
    out: list[int] = []
    while len(out) < max_tokens:
        tok = next_token(prompt + out, len(out))
        out.append(tok)
        if tok == EOS:
            break
    return out


def request(rid: str, prompt, max_tokens: int, priority: int = 0, tenant=None, n: int = 1):
    return Request(rid, None, list(prompt), SamplingParams(max_tokens=max_tokens, n=n), None,
                   frozenset({EOS}), priority=priority, tenant=tenant)


class SimDevice:
    def __init__(self, num_pages: int, page_size: int):
        self.page_size = page_size
        self.pages = [[None] * page_size for _ in range(num_pages)]
        self.last: dict[int, int] = {}  # row -> its last sampled token

    def _slot(self, chunk, pos):
        return self.pages[chunk.page_ids[pos // self.page_size]], pos % self.page_size

    def execute(self, plan):
        """Like the model: every chunk reads the pages as they were before the step (its past)
        plus its own tokens; the step's tokens are written after."""
        tokens, writes = [], []
        for c in plan.chunks:
            ids = [self.last[c.row]] if c.from_device else c.token_ids
            assert len(ids) == c.num_tokens
            context = []
            for pos in range(c.start):
                page, off = self._slot(c, pos)
                context.append(page[off])
            assert None not in context, f"{c.seq}: reads an unwritten position"
            writes += [(c, c.start + j, tok) for j, tok in enumerate(ids)]
            tok = -1
            if c.samples:
                tok = next_token(context + list(ids), c.output_pos)
            tokens.append(tok)
        for c, pos, tok in writes:
            page, off = self._slot(c, pos)
            page[off] = tok
        for c, tok in zip(plan.chunks, tokens):
            if c.samples:
                self.last[c.row] = tok
        n = len(tokens)
        return types.SimpleNamespace(tokens=np.array(tokens), logprobs=np.zeros(n),
                                     top_ids=np.zeros((n, 0), int),
                                     top_logprobs=np.zeros((n, 0)))


def drive(sched, device, arrivals: dict, aborts: dict | None = None, *, check=None,
          on_plan=None, max_steps: int = 5000):
    """Run the scheduler like the engine core does (iteration k's update after k+1's dispatch):
    `arrivals[k]` requests are added and `aborts[k]` request ids aborted before step k;
    `on_plan(plan)` sees every plan, `check()` runs after every step. Returns
    ({request id: Request}, number of steps)."""
    aborts = aborts or {}
    inflight, requests = None, {}
    last = max(list(arrivals) + list(aborts) + [0])
    for k in range(max_steps):
        for r in arrivals.get(k, ()):
            requests[r.request_id] = r
            sched.add(r)
        for rid in aborts.get(k, ()):
            if rid in requests and not requests[rid].finished:
                sched.abort(rid)
                requests[rid].abort()
        plan = sched.schedule()
        if on_plan is not None:
            on_plan(plan)
        current = None if plan.empty else (plan, device.execute(plan))
        if inflight is not None:
            for req, _ in sched.update(*inflight):
                if req.finished:
                    sched.finish(req.request_id)
        inflight = current
        if check is not None:
            check()
        if k > last and inflight is None and not sched.has_work:
            return requests, k
    raise AssertionError(f"not done after {max_steps} steps: {sched.running}, "
                         f"{list(sched.waiting)}")
