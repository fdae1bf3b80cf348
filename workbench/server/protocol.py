"""Request bodies of the OpenAI-compatible API (pydantic, `extra="forbid"`, strict types).

Contract: a body that parses here has well-typed fields (null means "not given" for every optional
field); range checks of sampling fields are left to `SamplingParams` (one source of truth, same
messages as the library). An unknown field is an error, and so is an OpenAI field this server does
not implement (see `errors.UNSUPPORTED_FIELDS`): nothing is accepted and silently ignored. One
exception: an unsupported field sent with a value that means "off" (null, `best_of: 1`,
`tools: []`, `response_format: {"type": "text"}`, `store: false`, ...) is dropped, because it asks
for exactly what the server does anyway.

Normalised shapes (validators): `CompletionRequest.prompt` -> a list of prompts, each a str or a
non-empty list of token ids; a chat message's `content` -> one str (text parts joined with "\n");
role "developer" -> "system"; `model: ""` -> None (the default model, as vLLM serves it); `seed`, any
signed 64-bit integer (OpenAI's range) -> `seed mod 2**63`, the engine's seed range (so -1 and
2**63 - 1 name the same random stream; every other pair of seeds differs).

Chat messages follow vLLM, not the strict rule: `name` is accepted (handed to the chat template),
other unknown keys in a message are ignored, and any role is accepted (the template decides what
it means), except "tool" and "function" and a non-empty `tool_calls`/`tool_call_id` (there is no
tool calling, so a 400).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workbench import sampling_params as sp
from workbench.server.errors import UNSUPPORTED_FIELDS


def _integral_float(value: Any) -> Any:
    """JSON has one number type: 7.0 is the integer 7 (JSON Schema agrees); 7.5 stays an error."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field: an int, or a float with no fractional part. Strings and bools are errors.
JsonInt = Annotated[int, BeforeValidator(_integral_float)]


def _schema(**json_schema: Any) -> dict[str, Any]:
    """Field kwargs that describe a range or shape in the OpenAPI document without enforcing it
    here: `SamplingParams` checks the values (one source of truth for the messages)."""
    return {"json_schema_extra": json_schema}


_TOKEN_ID = {"type": "integer", "minimum": 0, "maximum": sp.MAX_INT32}
_TOKEN_IDS = {"type": "array", "items": _TOKEN_ID, "minItems": 1}
_STOP_STRING = {"type": "string", "minLength": 1, "maxLength": sp.MAX_STOP_LEN}
_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}

MAX_N = 128  # OpenAI's limit on choices per prompt

# Values of unsupported fields that ask for the default behaviour (dropped, see module docstring).
_NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "best_of": (1,), "tools": ([],), "functions": ([],), "tool_choice": ("none",),
    "function_call": ("none",), "parallel_tool_calls": (False, True), "store": (False,),
    "response_format": ({"type": "text"},), "service_tier": ("auto", "default"),
    "metadata": ({},), "modalities": (["text"],), "suffix": ("",),
}


def _drop_neutral(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items()
            if not (k in UNSUPPORTED_FIELDS and (v is None or v in _NEUTRAL_VALUES.get(k, ())))}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_neutral_unsupported(cls, data: Any) -> Any:
        return _drop_neutral(data)


SEED_MIN, SEED_MAX = -(2**63), 2**63  # OpenAI's seed: a signed 64-bit integer (max exclusive)
ENGINE_SEED_RANGE = 2**63  # SamplingParams.seed is in [0, 2**63)


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(False, description="vLLM extension: usage in every chunk")


class _SamplingRequest(_Body):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = Field(None, description="served model name; optional with one model")
    temperature: float | None = Field(None, **_schema(minimum=0))
    top_p: float | None = Field(None, **_schema(exclusiveMinimum=0, maximum=1))
    top_k: JsonInt | None = Field(None, description="vLLM extension; -1 or 0 disables it",
                                  **_schema(minimum=-1, maximum=sp.MAX_INT32))
    min_p: float | None = Field(None, **_schema(minimum=0, maximum=1))
    presence_penalty: float | None = Field(
        None, **_schema(minimum=-sp.MAX_ABS_PENALTY, maximum=sp.MAX_ABS_PENALTY))
    frequency_penalty: float | None = Field(
        None, **_schema(minimum=-sp.MAX_ABS_PENALTY, maximum=sp.MAX_ABS_PENALTY))
    repetition_penalty: float | None = Field(None, **_schema(exclusiveMinimum=0))
    seed: JsonInt | None = Field(None, **_schema(minimum=-(2**63), maximum=2**63 - 1))
    stop: Any = Field(None, description="a string or a list of up to 16 strings", **_schema(
        anyOf=[_STOP_STRING, {"type": "array", "items": _STOP_STRING,
                              "maxItems": sp.MAX_STOP_STRINGS}, {"type": "null"}]))
    stop_token_ids: Any = Field(None, description="vLLM extension: list of token ids", **_schema(
        anyOf=[{"type": "array", "items": _TOKEN_ID, "maxItems": sp.MAX_STOP_TOKEN_IDS},
               {"type": "null"}]))
    n: JsonInt | None = Field(None, ge=1, le=MAX_N, description="choices per prompt (default 1)")
    logit_bias: Any = Field(None, description="{token id as a string: bias in [-100, 100]}",
                            **_schema(anyOf=[{
                                "type": "object", "maxProperties": sp.MAX_LOGIT_BIAS,
                                "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                                "additionalProperties": {
                                    "type": "number", "minimum": -sp.MAX_ABS_LOGIT_BIAS,
                                    "maximum": sp.MAX_ABS_LOGIT_BIAS}}, {"type": "null"}]))
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None
    min_tokens: JsonInt | None = Field(None, **_schema(minimum=0, maximum=sp.MAX_INT32))
    skip_special_tokens: bool | None = None
    user: str | None = Field(None, description="the tenant (eSurge's multi-tenant scheduling); "
                             "other engines accept it and ignore it, as OpenAI's API allows")
    priority: JsonInt | None = Field(None, description="vLLM extension: lower runs first (engines "
                                 "with a priority policy; others reject a value other than 0)")

    prompt_logprobs: JsonInt | None = Field(
        None, ge=0, le=20, description="vLLM extension: logprobs of the prompt tokens, with this "
        "many alternatives per position (top-level `prompt_logprobs` in the response)")

    @field_validator("model")
    @classmethod
    def _empty_model_is_default(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is None:
            return None
        if not SEED_MIN <= value < SEED_MAX:
            raise ValueError(f"seed must be a signed 64-bit integer, got {value}")
        return value % ENGINE_SEED_RANGE

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value


def _is_token_ids(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) for t in x)


def normalize_prompt(value: Any) -> list[str | list[int]]:
    """str | list[str] | list[int] | list[list[int]] -> list of prompts (ValueError otherwise)."""
    if isinstance(value, str):
        return [value]
    if _is_token_ids(value):
        return [list(value)]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value) or all(_is_token_ids(p) for p in value):
            return list(value)
    raise ValueError("prompt must be a string, a list of strings, a non-empty list of token ids, "
                     "or a list of such lists")


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions."""

    prompt: Any = Field(..., description="str, list of str, token ids or list of token-id lists",
                        **_schema(anyOf=[{"type": "string"},
                                         {"type": "array", "items": {"type": "string"},
                                          "minItems": 1},
                                         _TOKEN_IDS,
                                         {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]))
    max_tokens: JsonInt | None = Field(
        None, description="default 16 (OpenAI's legacy default); 0 with echo scores the prompt "
        "and generates nothing; prompt + max_tokens <= the model's context",
        **_schema(minimum=0, maximum=sp.MAX_INT32))
    echo: bool | None = False
    logprobs: JsonInt | None = Field(None, ge=0, le=20,
                                 description="number of top alternatives per token (legacy shape)")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> list[str | list[int]]:
        return normalize_prompt(value)

    @property
    def prompts(self) -> list[str | list[int]]:
        return self.prompt


_NO_TOOLS = ("tool", "function")


def normalize_content(value: Any) -> str:
    """A string, or a list of {"type": "text", "text": str} parts (joined with "\n")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"content part {i} has type {kind!r}; only text parts "
                                 "({'type': 'text', 'text': ...}) are supported")
            if set(part) != {"type", "text"} or not isinstance(part["text"], str):
                raise ValueError(
                    f"content part {i} must be exactly {{'type': 'text', 'text': str}}")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ValueError("content must be a string or a non-empty list of text parts")


class ChatMessage(_Body):
    model_config = ConfigDict(extra="ignore", strict=True)  # vLLM ignores unknown message keys

    role: str = Field(..., **_schema(minLength=1, **{"not": {"enum": list(_NO_TOOLS)}}))
    content: Any = Field(..., description="a string or a list of text parts", **_schema(
        anyOf=[{"type": "string"}, {"type": "array", "items": _TEXT_PART, "minItems": 1}]))
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value in _NO_TOOLS:
            raise ValueError(f"{value!r} messages are not supported (no tool calling)")
        if not value:
            raise ValueError("role must be a non-empty string")
        return "system" if value == "developer" else value

    @model_validator(mode="before")
    @classmethod
    def _no_tool_calls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("tool_calls", "tool_call_id"):
                if data.get(key):
                    raise ValueError(f"{key} is not supported (no tool calling)")
        return data

    def as_dict(self) -> dict[str, str]:
        d = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        return d

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> str:
        return normalize_content(value)


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: JsonInt | None = Field(None, description="deprecated alias of "
                                       "max_completion_tokens",
                                       **_schema(minimum=1, maximum=sp.MAX_INT32))
    max_completion_tokens: JsonInt | None = Field(
        None, description="default: the remaining context, at most 4096",
        **_schema(minimum=1, maximum=sp.MAX_INT32))
    logprobs: bool | None = False
    top_logprobs: JsonInt | None = Field(None, ge=0, le=20)

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_max_tokens(cls, value, info: ValidationInfo):
        other = info.data.get("max_tokens")
        if value is not None and other is not None and value != other:
            raise ValueError("give max_completion_tokens or max_tokens, not both")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def message_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


class TokenizeRequest(_Body):
    """POST /tokenize: exactly one of `prompt` or `messages` (chat template applied, with the
    assistant's turn opened unless `add_generation_prompt` is false); `return_token_strs` adds
    each token's text (vLLM's fields)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @field_validator("model")
    @classmethod
    def _empty_model_is_default(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[JsonInt] = Field(..., **_schema(items=_TOKEN_ID))

    @field_validator("model")
    @classmethod
    def _empty_model_is_default(cls, value: str | None) -> str | None:
        return value or None
