"""Types shared by every engine: request lifecycle, outputs, errors.

A request's lifecycle is an ordered enum, WAITING < RUNNING < PREEMPTED < FINISHED_*; every
finished state maps to one OpenAI `finish_reason` ("stop", "length", "abort", and "error" for a
request that failed inside the engine: its inputs could not be prepared, or a device step it was
in raised).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Union

# A prompt is text, or token ids that bypass the tokenizer.
Prompt = Union[str, list[int]]


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = 4  # max_tokens reached (or the model's context is full)
    FINISHED_ABORTED = 5  # abort(), client disconnect, engine shutdown
    FINISHED_ERROR = 6  # a fault inside the engine (see RequestFailedError)

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


class EngineError(RuntimeError):
    """The engine is closed or failed; the request could not run."""


class RequestFailedError(EngineError):
    """This request failed inside the engine (its inputs could not be prepared, or a device step
    it was in raised); the engine rebuilt its state and serves the other requests. Streams raise
    it; `generate` returns the request with finish_reason "error". Servers answer 503."""


class EngineDeadError(EngineError):
    """The engine failed and could not recover (its device state could not be rebuilt, or steps
    kept failing); every request fails fast with it until the engine is restarted."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full (servers map this to HTTP 429)."""


class PromptTooLongError(ValueError):
    """Prompt plus max_tokens does not fit the engine's context (HTTP 400 with the numbers)."""


@dataclasses.dataclass
class Logprob:
    """Log-probability of one generated token under the raw model logits, with the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (token id, logprob)


@dataclasses.dataclass
class CompletionOutput:
    """One of the `n` completions of a request."""

    index: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    delta_text: str = ""  # text added since the previous streamed output
    delta_token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[Logprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestOutput:
    """What an engine returns (whole) or streams (with `delta_text`) for one request."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    arrival_time: float = 0.0  # time.time() when the request arrived
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
