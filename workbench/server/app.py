"""`create_app(engines, ...) -> FastAPI`: the OpenAI-compatible HTTP API over workbench engines.

Routes:
    POST /v1/completions        legacy completions (see `serving.py`)
    POST /v1/chat/completions   chat completions with the tokenizer's chat template
    GET  /v1/models             {"object": "list", "data": [{id, object: "model",
                                max_model_len, ...}]}
    GET  /health                200 {"status": "ok"}, or 503 with the reason when an engine is
                                dead or the server drains (see `health.py`; never needs the key)
    GET  /metrics               Prometheus text of every served engine's collector
    POST /tokenize              {model?, prompt | messages, add_special_tokens?,
                                add_generation_prompt?, return_token_strs?} ->
                                {tokens, count, max_model_len, token_strs?} (vLLM's fields;
                                token_strs are the tokenizer's token strings, as vLLM's)
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
`ServerHandle.stop(drain=...)` first drains (`drain.py`): new requests get 503 while those in
flight finish. Errors always use the OpenAI envelope (see `errors.py`). `request_log` (a bounded
`collections.deque`) receives one entry per answered request (see `request_log.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from workbench.metrics import render_many
from workbench.server.drain import DrainGate
from workbench.server.errors import APIError, bad_request, install_error_handlers
from workbench.server.generation import ActiveGenerations
from workbench.server.health import problems, render_server_metrics
from workbench.server.middleware import APIKeyAuth, BodySizeLimit
from workbench.server.openapi import install_openapi
from workbench.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from workbench.server.registry import ServedModels
from workbench.server.request_log import RequestLog
from workbench.server.responses import TokenText
from workbench.server.serving import create_chat_completion, create_completion
from workbench.text_input import check_text

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# The routes are module-level functions that reach their app through `request.app.state`
# (served, token_text, created), never through a closure: FastAPI keeps each endpoint function in
# process-wide caches (4096 entries), so a closure over the app would keep every stopped app, its
# routes and its engines' tables alive (~2-3 MB per server start/stop cycle, issue 16).
router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining"}, status_code=503)
    dead = problems(request.app.state.served)
    if dead:
        return JSONResponse({"status": "unhealthy", "engines": dead}, status_code=503)
    return JSONResponse({"status": "ok"})

@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": state.created, "owned_by": "workbench",
         "root": engine.model.name, "engine": getattr(engine, "engine_name", None),
         "max_model_len": engine.max_model_len}
        for name, engine in state.served.engines.items()]}

@router.get("/metrics")
async def metrics(request: Request) -> Response:
    served = request.app.state.served
    return Response(render_many(served.collectors()) + render_server_metrics(served),
                    media_type=PROMETHEUS_CONTENT_TYPE)

@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    name, engine = request.app.state.served.resolve(body.model)
    return await create_completion(request, body, name, engine,
                                   request.app.state.token_text[id(engine)])

@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    name, engine = request.app.state.served.resolve(body.model)
    return await create_chat_completion(request, body, name, engine,
                                        request.app.state.token_text[id(engine)])

@router.post("/tokenize")
async def tokenize(request: Request, body: TokenizeRequest) -> JSONResponse:
    _, engine = request.app.state.served.resolve(body.model)
    if engine.tokenizer is None:
        raise bad_request("this model has no tokenizer", "model")
    if body.messages is not None:
        try:
            ids, _ = engine.chat_prompt([m.as_dict() for m in body.messages],
                                        add_generation_prompt=body.add_generation_prompt)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
    else:
        try:
            check_text("prompt", body.prompt)
        except ValueError as exc:
            raise bad_request(str(exc), "prompt") from exc
        ids = engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    ids = [int(i) for i in ids]
    out: dict[str, Any] = {"tokens": ids, "count": len(ids),
                           "max_model_len": engine.max_model_len}
    if body.return_token_strs:
        out["token_strs"] = engine.tokenizer.convert_ids_to_tokens(ids)
    return JSONResponse(out)

@router.post("/detokenize")
async def detokenize(request: Request, body: DetokenizeRequest) -> JSONResponse:
    _, engine = request.app.state.served.resolve(body.model)
    if engine.tokenizer is None:
        raise bad_request("this model has no tokenizer", "model")
    vocab = engine.tokenizer.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids must be in [0, {vocab}), got {bad[:5]}", "tokens")
    return JSONResponse({"prompt": engine.tokenizer.decode(body.tokens)})

@router.post("/reset_prefix_cache")
async def reset_prefix_cache(request: Request, model: str | None = None) -> JSONResponse:
    served = request.app.state.served
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


def create_app(engines: Any, *, api_key: str | dict[str, str] | None = None,
               max_body_bytes: int = 1_000_000, stop_engines: bool | None = None,
               title: str = "workbench", request_log: collections.deque | None = None) -> FastAPI:
    """Build the FastAPI app; see the module docstring."""
    served = ServedModels(engines, stop_engines=stop_engines)
    served.warn_metric_clashes()

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
            # uvloop's loop takes no part in cyclic GC: a reference from the app to its loop
            # would keep both (and the app's routes and token tables) alive after a stop
            app.state.loop = None

    app = FastAPI(title=f"{title} OpenAI-compatible API", lifespan=lifespan)
    app.state.served = served
    app.state.token_text = {id(e): TokenText(e.tokenizer) for e in served.distinct()}
    app.state.created = int(time.time())
    app.state.startup_error = None
    app.state.generations = ActiveGenerations()
    install_error_handlers(app)

    app.include_router(router)
    install_openapi(app, api_key=api_key is not None)  # the codes it really answers
    app.add_middleware(DrainGate)  # 503s while shutting down (drain.py)
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
