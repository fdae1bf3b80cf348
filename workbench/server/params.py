"""From a parsed request body to what an engine takes: token ids and one `SamplingParams`.

Default `max_tokens` when the request gives none (documented policy):
- /v1/completions: 16, OpenAI's legacy default;
- /v1/chat/completions: the rest of the context, `max_model_len - prompt_len`, at most 4096.

Everything is validated before any work starts (so a stream never begins with an error):
`SamplingParams` checks ranges (its ValueError names the field, which becomes the error's `param`),
then `engine.make_request` runs the engine's own checks on every prompt (token ids in the
vocabulary, logit_bias keys, prompt + max_tokens within `max_model_len`).
"""

from __future__ import annotations

from typing import Any

from workbench.sampling_params import SamplingParams
from workbench.server.errors import APIError, bad_request, from_engine_exception
from workbench.server.generation import PreparedPrompt
from workbench.server.protocol import ChatCompletionRequest, CompletionRequest
from workbench.text_input import check_text

COMPLETION_DEFAULT_MAX_TOKENS = 16
CHAT_DEFAULT_MAX_TOKENS_CAP = 4096

# Request fields copied to SamplingParams under the same name, when given.
_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                "repetition_penalty", "seed", "stop", "stop_token_ids", "n", "logit_bias",
                "ignore_eos", "min_tokens", "skip_special_tokens")

COMPLETION_PARAMS = frozenset(CompletionRequest.model_fields)
CHAT_PARAMS = frozenset(ChatCompletionRequest.model_fields)


def _common_kwargs(body: Any) -> dict[str, Any]:
    return {k: getattr(body, k) for k in _PASSTHROUGH if getattr(body, k) is not None}


def build_params(kwargs: dict[str, Any], known: frozenset[str],
                 aliases: dict[str, str] | None = None) -> SamplingParams:
    """`SamplingParams(**kwargs)`, its ValueError turned into a 400 naming the request field."""
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        raise from_engine_exception(exc, known_params=known, aliases=aliases) from exc


def context_error(prompt_len: int, max_tokens: int | None, max_model_len: int,
                  param: str) -> APIError:
    asked = f" and {max_tokens} completion tokens were requested" if max_tokens else ""
    return APIError(
        400, f"This model's maximum context length is {max_model_len} tokens; the prompt has "
        f"{prompt_len} tokens{asked}" + (f" ({prompt_len + max_tokens} in total)" if max_tokens
                                         else "") + ". Shorten the prompt or lower max_tokens.",
        param=param, code="context_length_exceeded")


def tokenize_prompts(engine: Any, prompts: list[str | list[int]]) -> list[PreparedPrompt]:
    out = []
    for p in prompts:
        if isinstance(p, str):
            if engine.tokenizer is None:
                raise bad_request("this model has no tokenizer: send token ids", "prompt")
            try:
                check_text("prompt", p)
            except ValueError as exc:
                raise bad_request(str(exc), "prompt") from exc
            ids = engine.tokenizer.encode(p)
            if not ids:  # "" with a tokenizer that adds no BOS (vLLM: "prompt cannot be empty")
                raise bad_request("the prompt is empty: it has no tokens after tokenization",
                                  "prompt")
            out.append(PreparedPrompt(ids, p))
        else:
            out.append(PreparedPrompt(list(p), None))
    return out


def scores_only(body: CompletionRequest) -> bool:
    """`echo` with `max_tokens: 0`: the prompt is scored (prompt logprobs), nothing generated."""
    return bool(body.echo) and body.max_tokens == 0


def check_prompt_logprobs(body: Any) -> None:
    """vLLM's rule: prompt logprobs are not streamed."""
    if body.prompt_logprobs is not None and body.stream:
        raise bad_request("prompt_logprobs is not available when stream is true",
                          "prompt_logprobs")


def completion_params(body: CompletionRequest, prompts: list[PreparedPrompt],
                      max_model_len: int) -> SamplingParams:
    """The request's SamplingParams; for `scores_only(body)` they are those of a one-token
    request (validated like any other, but never run)."""
    kwargs = _common_kwargs(body)
    max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    if scores_only(body):
        max_tokens = 1
    kwargs["max_tokens"] = max_tokens
    if body.logprobs is not None:
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = body.logprobs
    longest = max(len(p.ids) for p in prompts)
    if max_tokens >= 1 and longest + max_tokens > max_model_len:  # < 1: SamplingParams says so
        raise context_error(longest, max_tokens, max_model_len, "prompt")
    return build_params(kwargs, COMPLETION_PARAMS, {"top_logprobs": "logprobs"})


def chat_params(body: ChatCompletionRequest, prompt: PreparedPrompt,
                max_model_len: int) -> SamplingParams:
    kwargs = _common_kwargs(body)
    prompt_len = len(prompt.ids)
    if prompt_len >= max_model_len:
        raise context_error(prompt_len, None, max_model_len, "messages")
    asked = body.requested_max_tokens
    max_tokens = min(max_model_len - prompt_len, CHAT_DEFAULT_MAX_TOKENS_CAP) if asked is None \
        else asked
    if asked is not None and asked >= 1 and prompt_len + asked > max_model_len:
        raise context_error(prompt_len, asked, max_model_len, "messages")
    kwargs["max_tokens"] = max_tokens
    if body.logprobs:
        kwargs["logprobs"] = True
    if body.top_logprobs is not None:
        kwargs["top_logprobs"] = body.top_logprobs
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return build_params(kwargs, CHAT_PARAMS, {"max_tokens": name})


def check_priority(engine: Any, priority: int | None) -> int:
    """The request's priority (0 when absent); a 400 for a non-default value on an engine that
    cannot honour it (no priority policy), instead of ignoring it."""
    if not priority:
        return 0
    if not getattr(engine, "supports_priority", False):
        name = getattr(engine, "engine_name", type(engine).__name__)
        raise bad_request(
            f"priority {priority} cannot be honoured: this model's engine ({name}) does not "
            "schedule by priority (vsurge and esurge do with scheduling_policy='priority')",
            "priority", "unsupported_parameter")
    return priority


def tenant_of(body: Any, request: Any) -> str | None:
    """Who sent the request: the OpenAI `user` field, else the name of the API key used."""
    if body.user:
        return body.user
    return getattr(request.state, "api_key_name", None)


def validate_with_engine(engine: Any, prompts: list[PreparedPrompt], params: SamplingParams,
                         known: frozenset[str]) -> None:
    """Run the engine's own request checks on every prompt (no work is scheduled)."""
    for p in prompts:
        try:
            engine.make_request(p.ids, params, prompt_text=p.text)
        except ValueError as exc:
            raise from_engine_exception(exc, known_params=known) from exc
