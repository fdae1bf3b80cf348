"""Host-side request state shared by every engine: `Request` (one prompt) and `Sequence` (one of its
`n` completions).

A `Sequence` turns sampled token ids into text and decides when it ends: EOS (unless
`ignore_eos`), a stop token id, a stop string, or `max_tokens`. Stop strings are matched on the
detokenized text with a hold-back buffer: text that could still be the start of a stop string is not
released, so a stop string is never streamed and then retracted. Plain Python, no JAX.
"""

from __future__ import annotations

import secrets
import time

from workbench.detokenizer import IncrementalDetokenizer
from workbench.engines.types import CompletionOutput, Logprob, RequestOutput, RequestStatus
from workbench.sampling_params import SamplingParams
from workbench.tokenizer import Tokenizer

_SEED_STRIDE = 0x9E3779B97F4A7C15


def completion_seed(seed: int | None, index: int) -> int:
    """The seed of completion `index` of a request: `seed` itself for index 0, a fixed derivation
    for the others, a fresh random seed when the request has none."""
    if seed is None:
        return secrets.randbits(63)
    return (seed + index * _SEED_STRIDE) % (1 << 63)


class Sequence:
    """One completion being generated."""

    def __init__(self, index: int, params: SamplingParams, tokenizer: Tokenizer | None,
                 eos_token_ids: frozenset[int], prompt_ids: list[int]):
        self.index = index
        self.seed = completion_seed(params.seed, index)
        if params.seed is not None and index:  # the sampler reads the row's own seed
            params = params.with_seed(self.seed)
        self.params = params
        self.output_ids: list[int] = []
        self.logprobs: list[Logprob] | None = [] if params.logprobs else None
        self.status = RequestStatus.WAITING
        self.stop_reason: str | int | None = None
        self._eos = frozenset() if params.ignore_eos else eos_token_ids
        self._stop_ids = frozenset(params.stop_token_ids)
        self._detok = (
            IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens,
                                   prompt_ids=prompt_ids)
            if tokenizer is not None else None
        )
        self._text = ""  # detokenized text so far (may include held-back text)
        self._released = 0  # chars of _text that may be shown
        self._sent_chars = 0  # chars already handed out as deltas
        self._sent_ids = 0  # token ids already handed out as deltas
        self._max_stop = max((len(s) for s in params.stop), default=0)

    @property
    def finished(self) -> bool:
        return self.status.is_finished

    @property
    def text(self) -> str:
        return self._text[: self._released]

    def append(self, token_id: int, logprob: Logprob | None = None) -> bool:
        """Add one sampled token; returns True when the sequence has just finished (or was)."""
        if self.finished:
            return True
        self.output_ids.append(token_id)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        n = len(self.output_ids)
        past_min = n > self.params.min_tokens
        if past_min and token_id in self._stop_ids:
            self._finish(RequestStatus.FINISHED_STOPPED, stop_reason=token_id)
        elif past_min and token_id in self._eos:
            self._finish(RequestStatus.FINISHED_STOPPED)
        else:
            if self._detok is not None:
                self._text += self._detok.add(token_id)
            if not (past_min and self._match_stop_string()):
                if n >= self.params.max_tokens:
                    self._finish(RequestStatus.FINISHED_LENGTH)
                else:
                    self._released = len(self._text) - self._held_back()
        return self.finished

    def abort(self) -> None:
        if not self.finished:
            self._finish(RequestStatus.FINISHED_ABORTED)

    def fail(self) -> None:
        if not self.finished:
            self._finish(RequestStatus.FINISHED_ERROR)

    def _finish(self, status: RequestStatus, stop_reason=None) -> None:
        self.status = status
        self.stop_reason = stop_reason
        if self._detok is not None and not isinstance(stop_reason, str):
            self._text += self._detok.flush()
        if not isinstance(stop_reason, str):
            self._released = len(self._text)

    def _match_stop_string(self) -> bool:
        if not self._max_stop:
            return False
        start = max(0, self._released - self._max_stop + 1)
        hits = [(i, s) for s in self.params.stop if (i := self._text.find(s, start)) >= 0]
        if not hits:
            return False
        idx, stop = min(hits)
        self._text = self._text[:idx]
        self._released = idx
        self._finish(RequestStatus.FINISHED_STOPPED, stop_reason=stop)
        return True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could begin a stop string."""
        for k in range(min(self._max_stop - 1, len(self._text)), 0, -1):
            tail = self._text[-k:]
            if any(s.startswith(tail) for s in self.params.stop):
                return k
        return 0

    def completion(self, delta: bool) -> CompletionOutput:
        """A snapshot; with `delta`, also the text and ids added since the previous delta."""
        text = self.text
        out = CompletionOutput(
            index=self.index, text=text, token_ids=list(self.output_ids),
            logprobs=list(self.logprobs) if self.logprobs is not None else None,
            finish_reason=self.status.finish_reason, stop_reason=self.stop_reason,
        )
        if delta:
            out.delta_text = text[self._sent_chars:]
            out.delta_token_ids = self.output_ids[self._sent_ids:]
            self._sent_chars, self._sent_ids = len(text), len(self.output_ids)
        return out


class Request:
    """One prompt with its sampling parameters and `n` sequences."""

    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int],
                 params: SamplingParams, tokenizer: Tokenizer | None,
                 eos_token_ids: frozenset[int], priority: int = 0, tenant: str | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.priority = priority
        self.tenant = tenant  # who sent it (multi-tenant scheduling); None: the default tenant
        # Set by any thread once an abort of this request is queued (see EngineCore.abort): the
        # driver may then skip work for it before the abort itself is processed.
        self.abort_requested = False
        self.arrival_time = time.time()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self.error: str | None = None  # why it failed (finish_reason "error")
        self.sequences = [
            Sequence(i, params, tokenizer, eos_token_ids, prompt_ids) for i in range(params.n)
        ]

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.sequences)

    @property
    def finish_reason(self) -> str | None:
        """One reason for the whole request: "length" if any completion hit it, else the first's."""
        reasons = [s.status.finish_reason for s in self.sequences]
        if None in reasons:
            return None
        return "length" if "length" in reasons else reasons[0]

    def mark_token(self) -> None:
        """Record timing after tokens were appended."""
        now = time.time()
        if self.first_token_time is None:
            self.first_token_time = now
        if self.finished and self.finish_time is None:
            self.finish_time = now

    def abort(self) -> None:
        for s in self.sequences:
            s.abort()
        if self.finish_time is None:
            self.finish_time = time.time()

    def fail(self, error: str) -> None:
        """End every unfinished sequence with finish_reason "error"; `error` says why."""
        self.error = error
        for s in self.sequences:
            s.fail()
        if self.finish_time is None:
            self.finish_time = time.time()

    @property
    def admitted(self) -> bool:
        """Whether a scheduler has taken it in (it holds, or held, device state)."""
        return any(s.status != RequestStatus.WAITING or s.output_ids for s in self.sequences)

    def output(self, delta: bool = False) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_ids,
            outputs=[s.completion(delta) for s in self.sequences], finished=self.finished,
            arrival_time=self.arrival_time, first_token_time=self.first_token_time,
            finish_time=self.finish_time,
        )
