"""OpenAI response bodies and stream chunks, built as plain dicts from engine outputs.

Shapes (as the official `openai` client parses them):
- completion: `{id: "cmpl-...", object: "text_completion", created, model, choices: [{index, text,
  logprobs, finish_reason, stop_reason}], usage}`; stream chunks have the same shape with `text`
  deltas and no usage.
- chat: `{id: "chatcmpl-...", object: "chat.completion", ..., choices: [{index, message: {role,
  content}, logprobs, finish_reason, stop_reason}], usage}`; chunks are "chat.completion.chunk" with
  `delta` instead of `message`.
- usage: `{prompt_tokens, completion_tokens, total_tokens}`; prompt tokens count each prompt once
  (not once per `n`), completion tokens every generated token of every choice.
- logprobs, chat: `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`;
  legacy completions: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`;
  each `top_logprobs` entry holds the sampled token and the `logprobs` most likely ones (so
  `logprobs: 0` gives one entry per position, as OpenAI and vLLM do). With `echo`, the prompt's
  tokens come first: `token_logprobs[0]` and `top_logprobs[0]` are null (nothing predicts the
  first token), and `text_offset` counts from the start of the prompt.
- prompt logprobs, vLLM's shape: `[null, {token id: {logprob, rank, decoded_token}}, ...]`, one
  entry per prompt position, holding the prompt token and the `prompt_logprobs` most likely ones.
  Token strings are each token decoded alone (a byte-level piece of a character decodes to U+FFFD,
  its `bytes` are the UTF-8 of that string).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from workbench.engines.prompt_logprobs import PromptLogprob
from workbench.engines.types import CompletionOutput, Logprob


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class TokenText:
    """Token id -> its text alone, cached (one per tokenizer)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) if self.tokenizer is not None \
                else f"<{token_id}>"
            self._cache[token_id] = text
        return text


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---- logprobs ---------------------------------------------------------------------------------
def _entry(text: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    s = text(token_id)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(lps: Sequence[Logprob], text: TokenText) -> dict[str, Any]:
    return {"content": [
        {**_entry(text, lp.token_id, lp.logprob),
         "top_logprobs": [_entry(text, tid, v) for tid, v in lp.top]}
        for lp in lps
    ]}


def completion_logprobs(lps: Sequence[Logprob | PromptLogprob | None], text: TokenText,
                        offset: int, num_top: int | None = None,
                        first_token: int | None = None) -> dict[str, Any]:
    """Legacy shape; `offset` is the character position of the first token in the choice text.
    A None entry (the first prompt token, whose id is `first_token`) has null logprobs.
    `num_top`: alternatives per position (default: all the entry has)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for lp in lps:
        s = text(first_token if lp is None else lp.token_id)
        tokens.append(s)
        offsets.append(offset)
        offset += len(s)
        if lp is None:
            token_logprobs.append(None)
            tops.append(None)
            continue
        token_logprobs.append(lp.logprob)
        top = lp.top if num_top is None else lp.top[:num_top]
        tops.append({s: lp.logprob, **{text(tid): v for tid, v in top if text(tid) != s}})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
            "text_offset": offsets}


def join_logprobs(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two legacy logprobs dicts, one after the other (echoed prompt, then completion)."""
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


def vllm_prompt_logprobs(plps: Sequence[PromptLogprob | None], text: TokenText,
                         num_top: int) -> list[dict[str, Any] | None]:
    """vLLM's `prompt_logprobs` (see the module docstring)."""
    out: list[dict[str, Any] | None] = []
    for lp in plps:
        if lp is None:
            out.append(None)
            continue
        entry = {str(lp.token_id): {"logprob": lp.logprob, "rank": lp.rank,
                                    "decoded_token": text(lp.token_id)}}
        for rank, (tid, v) in enumerate(lp.top[:num_top], start=1):
            entry.setdefault(str(tid), {"logprob": v, "rank": rank, "decoded_token": text(tid)})
        out.append(entry)
    return out


def delta_logprobs(out: CompletionOutput) -> list[Logprob]:
    """The logprobs of the tokens in `out.delta_token_ids`."""
    if not out.logprobs or not out.delta_token_ids:
        return []
    end = len(out.token_ids)
    return out.logprobs[end - len(out.delta_token_ids):end]


# ---- whole responses ---------------------------------------------------------------------------
def completion_choice(index: int, text: str, out: CompletionOutput,
                      logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs,
            "finish_reason": out.finish_reason, "stop_reason": out.stop_reason}


def chat_choice(index: int, out: CompletionOutput,
                logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": out.text},
            "logprobs": logprobs, "finish_reason": out.finish_reason,
            "stop_reason": out.stop_reason}


def response(kind: str, response_id: str, model: str, choices: list[dict[str, Any]],
             usage_: dict[str, int]) -> dict[str, Any]:
    """kind: "text_completion" or "chat.completion"."""
    return {"id": response_id, "object": kind, "created": now(), "model": model,
            "choices": choices, "usage": usage_}


# ---- stream chunks -----------------------------------------------------------------------------
class ChunkMaker:
    """Builds the chunks of one streamed response (same id, created and model in each)."""

    def __init__(self, kind: str, response_id: str, model: str):
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.kind = kind
        self.id = response_id
        self.model = model
        self.created = now()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": choices, **extra}

    def _chunk_usage(self, choices: list[dict[str, Any]],
                     usage_: dict[str, int] | None) -> dict[str, Any]:
        return self._chunk(choices, **({"usage": usage_} if usage_ is not None else {}))

    def role(self, index: int, usage: dict[str, int] | None = None) -> dict[str, Any]:
        """Chat only: the first chunk of a choice (`usage`: vLLM's continuous usage stats)."""
        return self._chunk_usage([{"index": index, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None}], usage)

    def delta(self, index: int, text: str, logprobs: dict[str, Any] | None = None,
              finish_reason: str | None = None, stop_reason: str | int | None = None,
              usage: dict[str, int] | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": index, "delta": {"content": text} if text else {}}
        else:
            choice = {"index": index, "text": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        return self._chunk_usage([choice], usage)

    def usage(self, usage_: dict[str, int]) -> dict[str, Any]:
        return self._chunk([], usage=usage_)
