"""`SeqState`: one sequence (one of a request's `n` completions) as eSurge's scheduler tracks it.
Plain Python, no JAX.

NOTE: the one idea (as in vLLM v1): there is no prefill phase and no decode phase. A sequence has
`num_tokens` tokens (prompt + generated) and `num_computed_tokens` of them have their KV in the
cache; each step computes the next few (a prompt chunk, a whole prompt, one decode token, or a
recompute after a preemption). A step whose chunk reaches the last token also samples the next one.

The host learns a sampled token one step late (the core overlaps host and device), so a sequence
may have a token "in flight": sampled on the device, not yet read back. It still counts in
`num_tokens` (its KV is computed by the next step, which reads it from the device), but its id is
unknown: `num_known_tokens` excludes it.
"""

from __future__ import annotations

from workbench.engines.block_pool import ROOT_HASH, hash_block
from workbench.engines.request import Request, Sequence


class SeqState:
    def __init__(self, request: Request, seq: Sequence, arrival: int):
        self.request = request
        self.seq = seq
        self.request_id = f"{request.request_id}#{seq.index}"  # the queues' key
        self.arrival = arrival  # global order of submission; kept across preemptions
        self.num_computed_tokens = 0
        self.num_inflight = 0  # sampled on the device, not read back yet
        self.row: int | None = None  # persistent batch row while running
        self.block_hashes: list[bytes] = []  # hashes of the full blocks of known tokens
        self.num_preemptions = 0
        self.scheduled_once = False

    def __repr__(self) -> str:
        return (f"SeqState({self.request_id}, computed={self.num_computed_tokens}/"
                f"{self.num_tokens}, inflight={self.num_inflight}, row={self.row})")

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def tenant(self) -> str | None:
        return self.request.tenant

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def num_known_tokens(self) -> int:
        return len(self.request.prompt_ids) + len(self.seq.output_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_known_tokens + self.num_inflight

    @property
    def num_new_tokens(self) -> int:
        """Tokens whose KV is not computed yet (the next chunk takes some or all of them)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def done_sampling(self) -> bool:
        """Every token it may generate is sampled (or it finished): nothing left to schedule."""
        return self.seq.finished or (
            len(self.seq.output_ids) + self.num_inflight >= self.seq.params.max_tokens)

    @property
    def resumed(self) -> bool:
        return self.num_preemptions > 0

    @property
    def uses_penalties(self) -> bool:
        p = self.seq.params
        return (p.repetition_penalty != 1.0 or p.presence_penalty != 0.0
                or p.frequency_penalty != 0.0)

    def token_ids(self, start: int, end: int) -> list[int]:
        """Known token ids in [start, end) (prompt then generated)."""
        prompt = self.request.prompt_ids
        n = len(prompt)
        if end <= n:
            return prompt[start:end]
        out = self.seq.output_ids
        return prompt[start:n] + out[max(start - n, 0): end - n] if start < n \
            else out[start - n: end - n]

    def update_hashes(self, page_size: int) -> list[bytes]:
        """Extend `block_hashes` to every full block of known tokens; returns it."""
        full = self.num_known_tokens // page_size
        while len(self.block_hashes) < full:
            i = len(self.block_hashes)
            parent = self.block_hashes[-1] if i else ROOT_HASH
            self.block_hashes.append(
                hash_block(parent, self.token_ids(i * page_size, (i + 1) * page_size)))
        return self.block_hashes
