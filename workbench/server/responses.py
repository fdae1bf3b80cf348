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
  legacy completions: `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`.
  Token strings are each token decoded alone (a byte-level piece of a character decodes to U+FFFD,
  its `bytes` are the UTF-8 of that string).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

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


def completion_logprobs(lps: Sequence[Logprob], text: TokenText, offset: int) -> dict[str, Any]:
    """Legacy shape; `offset` is the character position of the first token in the choice text."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for lp in lps:
        s = text(lp.token_id)
        tokens.append(s)
        token_logprobs.append(lp.logprob)
        tops.append({text(tid): v for tid, v in lp.top})
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
            "text_offset": offsets}


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

    def role(self, index: int) -> dict[str, Any]:
        """Chat only: the first chunk of a choice."""
        return self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def delta(self, index: int, text: str, logprobs: dict[str, Any] | None = None,
              finish_reason: str | None = None, stop_reason: str | int | None = None
              ) -> dict[str, Any]:
        if self.kind == "chat":
            choice = {"index": index, "delta": {"content": text} if text else {}}
        else:
            choice = {"index": index, "text": text}
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        return self._chunk([choice])

    def usage(self, usage_: dict[str, int]) -> dict[str, Any]:
        return self._chunk([], usage=usage_)
