"""A workbench engine in the proxy's own process, served exactly as `workbench serve` serves it.

The request body (with `model` set to the route's name) is validated by the server's own request
models and handed to the server's own endpoint code (`serving.create_completion` /
`create_chat_completion`): same parameters, same 400s, same SSE, same abort on disconnect. The
proxy adds its bookkeeping around it (see `backend.py`): an engine that is overloaded (429) or
unavailable (closed, failed: 503) before the first byte is a `BackendFailure`, so the router tries
the next backend; a 400 is the client's answer.

Health: an engine answers its probe while the server's `/health` would call it serving
(`workbench.server.health.engine_problem`: not closed, not dead, no `health_error()`); an engine
that starts its worker on the first request (vInference's batch queue) is healthy while idle. A
failed request still counts toward marking it down.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

import pydantic
from starlette.responses import Response, StreamingResponse

from workbench.server.errors import APIError, validation_error
from workbench.server.health import engine_problem
from workbench.server.protocol import ChatCompletionRequest, CompletionRequest
from workbench.server.proxy.backend import BACKEND_HEADER, Attempt, Backend, BackendFailure, \
    Call, Target
from workbench.server.proxy.health import BackendHealth
from workbench.server.proxy.sse import carries_text
from workbench.server.responses import TokenText
from workbench.server.serving import CLIENT_CLOSED, create_chat_completion, create_completion

logger = logging.getLogger("workbench.proxy")

_ERROR_EVENT = 'data: {"error":'  # how serving.py's stream error events begin (compact JSON)



class LocalEngine(Backend):
    """See the module docstring."""

    def __init__(self, engine: Any, name: str, health: BackendHealth):
        super().__init__(name, health)
        self.engine = engine
        self.token_text = TokenText(engine.tokenizer)

    def __repr__(self) -> str:
        return f"LocalEngine({self.name!r})"

    async def probe(self) -> bool:
        return engine_problem(self.engine) is None

    async def forward(self, call: Call, target: Target, attempt: Attempt) -> Response:
        body = dict(call.body)
        body["model"] = call.route
        if call.endpoint == "completions":
            parse, create = CompletionRequest, create_completion
        else:
            parse, create = ChatCompletionRequest, create_chat_completion
        try:
            parsed = parse.model_validate(body)
        except pydantic.ValidationError as exc:
            raise validation_error(list(exc.errors())) from None
        try:
            response = await create(call.request, parsed, call.route, self.engine,
                                    self.token_text)
        except APIError as exc:
            if exc.status == 429:
                raise BackendFailure("http_429", "engine overloaded", marks_down=False,
                                     retry_after=(exc.headers or {}).get("Retry-After")) from None
            if exc.status >= 500:
                raise BackendFailure("engine", exc.message) from None
            raise
        response.headers[BACKEND_HEADER] = self.name
        if response.status_code == CLIENT_CLOSED:
            attempt.fail("cancelled", "client disconnected")
        elif isinstance(response, StreamingResponse):
            response.body_iterator = self._watch(response.body_iterator, attempt)
        else:
            attempt.succeed()
        return response

    @staticmethod
    async def _watch(events: AsyncIterator[str], attempt: Attempt) -> AsyncIterator[str]:
        """Pass the events on; note the first one with text, an error event, the end."""
        failed = False
        try:
            async for event in events:
                if event.startswith(_ERROR_EVENT):
                    failed = True
                elif attempt.wants_ttft and event.startswith("data: {") and \
                        carries_text(json.loads(event[6:])):
                    attempt.first_text()
                yield event
            if failed:
                attempt.fail("engine", "error event in the stream", marks_down=True)
            else:
                attempt.succeed()
        finally:
            if not attempt.done:
                attempt.fail("cancelled", "client disconnected")
