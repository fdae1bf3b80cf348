"""The OpenAPI document the server publishes, made to match what it really answers.

FastAPI advertises 422 for every route with a body, but the server answers 400 with the OpenAI
envelope (`errors.py`). `install_openapi(app, api_key=...)` rewrites each operation's responses:
no 422; 400 for routes that read input; 401 on every route but /health when an API key is set;
404 for routes that select a model; 413 for POST routes (body size); 429 for the generation
routes (queue full); 503 everywhere (the server drains; a generation's engine is dead). Every error
response refers to one `ErrorResponse` schema, the envelope. Success media types are the real ones:
`/metrics` answers Prometheus text (`text/plain`), the generation routes JSON or, with
`"stream": true`, server-sent events (`text/event-stream`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_GENERATION = {"/v1/completions", "/v1/chat/completions"}
_MODEL_ROUTES = _GENERATION | {"/tokenize", "/detokenize", "/reset_prefix_cache"}

_ENVELOPE = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"],
                             "properties": {"message": {"type": "string"},
                                            "type": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                            "code": {"type": ["string", "null"]}}}}}

_SUCCESS_MEDIA = {"/metrics": {"text/plain": {"schema": {"type": "string"}}}}
for _path in _GENERATION:
    _SUCCESS_MEDIA[_path] = {"application/json": {"schema": {"type": "object"}},
                             "text/event-stream": {"schema": {"type": "string"}}}

_WHY = {"400": "Invalid request (a field value, a limit, malformed JSON)",
        "401": "Missing or wrong API key", "404": "Unknown model or route",
        "413": "Request body over the size limit",
        "429": "The engine's waiting queue is full (see Retry-After)",
        "503": "The engine is unavailable (failed, closed) or the server is shutting down"}


def _codes(path: str, method: str, api_key: bool) -> list[str]:
    if path == "/health":
        return ["503"]
    codes = []
    if method == "post" or path == "/reset_prefix_cache":
        codes.append("400")
    if api_key:
        codes.append("401")
    if path in _MODEL_ROUTES:
        codes.append("404")
    if method == "post":
        codes.append("413")
    if path in _GENERATION:
        codes.append("429")
    codes.append("503")  # every route while the server drains; generation: a dead engine
    return codes


def install_openapi(app: FastAPI, *, api_key: bool) -> None:
    """Replace `app.openapi` with the corrected document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorResponse"] = _ENVELOPE
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                if path in _SUCCESS_MEDIA:
                    responses["200"]["content"] = _SUCCESS_MEDIA[path]
                for code in _codes(path, method, api_key):
                    responses[code] = {"description": _WHY[code],
                                       "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
