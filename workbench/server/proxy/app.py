"""`create_proxy_app(routes, ...) -> FastAPI` and `serve_proxy(routes, ...) -> ServerHandle`: one
OpenAI-compatible endpoint in front of local engines and upstream OpenAI-compatible servers.

Routes (the same surface and error rules as `workbench serve`, see `server/app.py`):
    POST /v1/completions, /v1/chat/completions
                    forwarded by the body's `model` (see `router.py`, `upstream.py`, `local.py`);
                    the response names the backend that answered in `x-workbench-backend`
    GET  /v1/models  every public model name once
    GET  /health     {"status": "ok" | "degraded" | "unavailable", "models": {name: {
                     "backends_up", "backends"}}}: 200 while some backend is up ("degraded": not
                     all), else 503 (never needs the API key, like the server's)
    GET  /metrics    the proxy's metrics (`metrics.py`) and the local engines' (Prometheus text)

The proxy reads the body once: it must be a JSON object, `model` a string (optional with one
route), `stream` a boolean; everything else is the backend's to judge. Bad input is a 400 with
the OpenAI envelope; an unknown model a 404; no backend left a 503 naming the model.
`api_key` guards every route but /health (Bearer, constant time: the server's middleware), and so
does the body size limit. Lifecycle: at startup the local engines are started (as `create_app`
does, see `registry.ServedModels`), the upstream pools opened and the health checks begun; at
shutdown all of it is undone. `serve_proxy` runs the app with the server's handle (`handle.py`):
`.url`, `.stop()` (streams in flight get an error event), nothing leaked, restartable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from workbench.metrics import render_many
from workbench.server.app import PROMETHEUS_CONTENT_TYPE
from workbench.server.errors import bad_request, install_error_handlers
from workbench.server.generation import ActiveGenerations
from workbench.server.handle import ServerHandle, serve
from workbench.server.middleware import APIKeyAuth, BodySizeLimit
from workbench.server.proxy.backend import Call
from workbench.server.proxy.config import parse_config
from workbench.server.proxy.metrics import ProxyMetrics
from workbench.server.proxy.router import dispatch
from workbench.server.proxy.runtime import ProxyRuntime
from workbench.server.registry import ServedModels


async def _read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise bad_request("A JSON request body is required", None, "missing_body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"Malformed JSON body: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, got {type(body).__name__}",
                          None, "invalid_json")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"Invalid value for 'stream': expected a boolean, got {stream!r}",
                          "stream")
    return body


def create_proxy_app(routes: Any, *, api_key: str | None = None, max_body_bytes: int = 1_000_000,
                     stop_engines: bool | None = None, metrics_prefix: str = "workbench:",
                     title: str = "workbench proxy") -> FastAPI:
    """Build the proxy app; see the module docstring. `routes`: a `ProxyConfig` or what
    `config.parse_config` takes. `stop_engines` as in `create_app` (local engines only)."""
    config = parse_config(routes)
    metrics = ProxyMetrics(metrics_prefix)
    runtime = ProxyRuntime(config, metrics)
    served = ServedModels(runtime.engines, stop_engines=stop_engines) if runtime.engines else None
    if served is not None:
        served.warn_metric_clashes()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()
        try:
            if served is not None:
                served.start()
            await runtime.start()
        except Exception as exc:
            app.state.startup_error = exc  # reported by serve()
            await runtime.stop()
            if served is not None:
                served.stop()
            raise
        try:
            yield
        finally:
            await runtime.stop()
            if served is not None:
                served.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.proxy = runtime
    app.state.metrics = metrics
    app.state.startup_error = None
    app.state.generations = ActiveGenerations()
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        report = runtime.health()
        return JSONResponse(report, status_code=503 if report["status"] == "unavailable" else 200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "workbench-proxy"}
            for name in runtime.routes]}

    @app.get("/metrics")
    async def metrics_text() -> Response:
        collectors = [metrics, *(served.collectors() if served is not None else ())]
        return Response(render_many(collectors), media_type=PROMETHEUS_CONTENT_TYPE)

    async def forward(request: Request, endpoint: str) -> Response:
        body = await _read_body(request)
        route = runtime.resolve(body.get("model"))
        call = Call(request, route.name, endpoint, body, bool(body.get("stream")))
        return await dispatch(call, route, metrics)

    async def completions(request: Request) -> Response:
        return await forward(request, "completions")

    async def chat_completions(request: Request) -> Response:
        return await forward(request, "chat/completions")

    # Plain Starlette routes: the proxy reads the body itself, and FastAPI's parameter machinery
    # would add a tenth of a millisecond to every request for nothing.
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])

    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    if api_key is not None:
        app.add_middleware(APIKeyAuth, api_key=api_key)
    return app


def serve_proxy(routes: Any, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                timeout: float = 30.0, *, log_level: str = "warning",
                **app_kwargs: Any) -> ServerHandle:
    """Run the proxy in a background thread (as `serve` runs the server); `**app_kwargs` go to
    `create_proxy_app`. Returns the server's handle."""
    app = create_proxy_app(routes, api_key=api_key, **app_kwargs)
    return serve(app, host=host, port=port, timeout=timeout, log_level=log_level)
