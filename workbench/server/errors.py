"""Errors of the OpenAI-compatible server, and their one JSON shape.

Every error response, whatever its cause, is the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`:

| cause                                | status | type                  | code                    |
|--------------------------------------|--------|-----------------------|-------------------------|
| bad field value, malformed JSON      | 400    | invalid_request_error | invalid_value, ...      |
| unknown or unsupported field         | 400    | invalid_request_error | unknown_parameter, ...  |
| prompt + max_tokens over the context | 400    | invalid_request_error | context_length_exceeded |
| missing or wrong API key             | 401    | invalid_request_error | invalid_api_key         |
| unknown model                        | 404    | invalid_request_error | model_not_found         |
| body over `max_body_bytes`           | 413    | invalid_request_error | request_too_large       |
| `EngineOverloadedError` (queue full) | 429    | rate_limit_error      | rate_limit_exceeded     |
| `EngineError` (closed, failed)       | 503    | server_error          | engine_unavailable      |
| anything unexpected (logged)         | 500    | server_error          | internal_error          |

`APIError` is raised anywhere in the request path; `from_engine_exception` converts what engines and
`SamplingParams` raise; `install_error_handlers` maps everything else (FastAPI's validation errors,
route 404/405, unexpected exceptions) to the envelope, so FastAPI's 422 never reaches a client.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workbench.engines.types import EngineError, EngineOverloadedError, PromptTooLongError

logger = logging.getLogger("workbench.server")

INVALID_REQUEST = "invalid_request_error"

# OpenAI request fields this server does not implement: naming one is a 400, never ignored.
UNSUPPORTED_FIELDS: frozenset[str] = frozenset({
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
    "best_of", "suffix", "audio", "modalities", "prediction", "service_tier", "store", "metadata",
    "reasoning_effort", "reasoning", "web_search_options", "logits_processors", "verbosity",
    "prompt_cache_key", "safety_identifier", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "structured_outputs",
    # message-level fields
    "tool_calls", "tool_call_id", "refusal",
})


class APIError(Exception):
    """An error with its HTTP status and OpenAI envelope fields."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,  # noqa: A002
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


_LEADING_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)")


def infer_param(message: str, known: frozenset[str] | set[str],
                aliases: dict[str, str] | None = None) -> str | None:
    """The request field a `ValueError` message is about: its first word, when that is a field.

    `aliases` renames engine names to request names (e.g. `top_logprobs` -> `logprobs`).
    """
    m = _LEADING_NAME.match(message)
    if not m:
        return None
    name = m.group(1)
    name = (aliases or {}).get(name, name)
    return name if name in known else None


def from_engine_exception(exc: BaseException, *, known_params: frozenset[str] = frozenset(),
                          aliases: dict[str, str] | None = None) -> APIError | None:
    """The APIError for an exception raised by an engine or `SamplingParams`, or None if it is
    not one the client caused or can act on (a bug: let it become a 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, f"This model's maximum context length is exceeded: {exc}",
                        param="messages" if "messages" in known_params else "prompt",
                        code="context_length_exceeded")
    if isinstance(exc, EngineOverloadedError):
        return APIError(429, f"The engine is overloaded, retry later: {exc}",
                        type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, EngineError):
        return APIError(503, f"The engine is unavailable: {exc}", type="server_error",
                        code="engine_unavailable")
    if isinstance(exc, ValueError):
        return bad_request(str(exc), infer_param(str(exc), known_params, aliases))
    return None


# ---- FastAPI exception handlers ---------------------------------------------------------------
def format_loc(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """The 400 for the first error pydantic/FastAPI found in a request body."""
    if not errors:
        return bad_request("Invalid request body")
    err = errors[0]
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    param = format_loc(loc)
    msg = str(err.get("msg", "invalid value"))
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", msg)
        return bad_request(f"Malformed JSON body: {detail}", None, "invalid_json")
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else param
        if field in UNSUPPORTED_FIELDS:
            return bad_request(f"'{param}' is not supported by this server", param,
                               "unsupported_parameter")
        return bad_request(f"Unrecognized request argument supplied: '{param}'", param,
                           "unknown_parameter")
    if kind == "missing":
        if param is None:
            return bad_request("A JSON request body is required", None, "missing_body")
        return bad_request(f"'{param}' is a required property", param, "missing_required_parameter")
    msg = msg.removeprefix("Value error, ")
    return bad_request(f"Invalid value for '{param}': {msg}" if param else msg, param)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error raised while handling a request to the OpenAI envelope."""

    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code,
                        headers=getattr(exc, "headers", None)).response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return APIError(500, f"Internal server error: {type(exc).__name__}: {exc}",
                        type="server_error", code="internal_error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
