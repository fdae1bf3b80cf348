"""`create_app(engines, ...) -> FastAPI`: the OpenAI-compatible HTTP API over workbench engines.

Routes:
    POST /v1/completions        legacy completions (see `serving.py`)
    POST /v1/chat/completions   chat completions with the tokenizer's chat template
    GET  /v1/models             {"object": "list", "data": [{id, object: "model",
                                max_model_len, ...}]}
    GET  /health                200 {"status": "ok"} (never needs the API key); 503
                                {"status": "error", "errors": {model: why}} when an engine died
    GET  /metrics               Prometheus text of every served engine's collector
    POST /tokenize              {model?, prompt | messages, add_special_tokens?} ->
                                {tokens, count, max_model_len}
    POST /detokenize            {model?, tokens} -> {prompt}
    POST /reset_prefix_cache    ?model=name (default: every engine with a prefix cache) ->
                                {"reset": {served name: pages uncached}}; guarded by the API key
                                like every route but /health

`engines`: one engine (served as `engine.model.name`) or {served model name: engine}; a request's
`model` picks one (optional with a single model; unknown -> 404 "model_not_found").

Lifecycle: at startup the app calls `start()` on every engine that has one and is not running; at
shutdown it stops those it started (`stop_engines=None`, the default), all of them (`True`) or none
(`False`). `end_generations(app)` (thread-safe) ends every generation in flight, as a server
about to stop does: waiting clients get a 503, streams an error event, engines abort the requests.
Errors always use the OpenAI envelope (see `errors.py`). `request_log` (a bounded
`collections.deque`) receives one entry per answered request (see `request_log.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from workbench.metrics import render_many
from workbench.server.errors import APIError, bad_request, install_error_handlers
from workbench.server.generation import ActiveGenerations
from workbench.server.middleware import APIKeyAuth, BodySizeLimit
from workbench.server.protocol import (ChatCompletionRequest, CompletionRequest,
                                       DetokenizeRequest, TokenizeRequest)
from workbench.server.registry import ServedModels
from workbench.server.request_log import RequestLog
from workbench.server.responses import TokenText
from workbench.server.serving import create_chat_completion, create_completion

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(engines: Any, *, api_key: str | dict[str, str] | None = None,
               max_body_bytes: int = 1_000_000, stop_engines: bool | None = None,
               title: str = "workbench", request_log: collections.deque | None = None) -> FastAPI:
    """Build the FastAPI app; see the module docstring."""
    served = ServedModels(engines, stop_engines=stop_engines)
    served.warn_metric_clashes()
    token_text = {id(e): TokenText(e.tokenizer) for e in served.distinct()}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()
        try:
            served.start()
        except Exception as exc:
            app.state.startup_error = exc  # reported by serve()
            raise
        try:
            yield
        finally:
            served.stop()

    app = FastAPI(title=f"{title} OpenAI-compatible API", lifespan=lifespan)
    app.state.served = served
    app.state.startup_error = None
    app.state.generations = ActiveGenerations()
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> Any:
        failed = {name: err for name, engine in served.engines.items()
                  if (err := getattr(engine, "health_error", lambda: None)())}
        if failed:  # a dead engine (e.g. a lost process of a multi-host job) fails the check
            return JSONResponse({"status": "error", "errors": failed}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "workbench",
             "root": engine.model.name, "engine": getattr(engine, "engine_name", None),
             "max_model_len": engine.max_model_len}
            for name, engine in served.engines.items()]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_many(served.collectors()), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        name, engine = served.resolve(body.model)
        return await create_completion(request, body, name, engine, token_text[id(engine)])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        name, engine = served.resolve(body.model)
        return await create_chat_completion(request, body, name, engine, token_text[id(engine)])

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        _, engine = served.resolve(body.model)
        if engine.tokenizer is None:
            raise bad_request("this model has no tokenizer", "model")
        if body.messages is not None:
            try:
                ids, _ = engine.chat_prompt([{"role": m.role, "content": m.content}
                                             for m in body.messages])
            except ValueError as exc:
                raise bad_request(str(exc), "messages") from exc
        else:
            ids = engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        ids = [int(i) for i in ids]
        return JSONResponse({"tokens": ids, "count": len(ids),
                             "max_model_len": engine.max_model_len})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        _, engine = served.resolve(body.model)
        if engine.tokenizer is None:
            raise bad_request("this model has no tokenizer", "model")
        vocab = engine.tokenizer.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"token ids must be in [0, {vocab}), got {bad[:5]}", "tokens")
        return JSONResponse({"prompt": engine.tokenizer.decode(body.tokens)})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(model: str | None = None) -> JSONResponse:
        if model is not None:
            name, engine = served.resolve(model)
            if not hasattr(engine, "reset_prefix_cache"):
                raise bad_request(f"the model '{name}' has no prefix cache (its engine is "
                                  f"{getattr(engine, 'engine_name', '?')})", "model")
            targets = {name: engine}
        else:
            targets = {n: e for n, e in served.engines.items() if hasattr(e, "reset_prefix_cache")}
            if not targets:
                raise bad_request("no served model has a prefix cache (eSurge has one)")
        done: dict[str, int] = {}
        for name, engine in targets.items():
            done[name] = await asyncio.to_thread(engine.reset_prefix_cache)
        return JSONResponse({"reset": done})

    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    if api_key is not None:
        app.add_middleware(APIKeyAuth, api_key=api_key)
    if request_log is not None:  # outermost: refused requests are logged too
        app.add_middleware(RequestLog, log=request_log)
    return app


def end_generations(app: FastAPI) -> None:
    """End every generation in flight (thread-safe; a no-op before startup or after shutdown)."""
    loop = getattr(app.state, "loop", None)
    active = getattr(app.state, "generations", None)
    if loop is None or active is None or loop.is_closed():
        return
    error = APIError(503, "The server is shutting down", type="server_error",
                     code="server_shutdown")
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(active.cancel_all, error)
