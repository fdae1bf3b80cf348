"""OpenAI-compatible API server over workbench engines.

- `create_app(engines, *, api_key=None, max_body_bytes=1_000_000, stop_engines=None) -> FastAPI`
- `serve(engines, host="127.0.0.1", port=0, api_key=None, timeout=30, **kw) -> ServerHandle`
  runs it in a background thread (notebooks); `ServerHandle.url`, `.stop()`, `.public_url`.
- `create_proxy_app(routes, ...)`, `serve_proxy(routes, host="127.0.0.1", port=0, ...)`: the proxy
  in front of local engines and upstream OpenAI-compatible servers (the `proxy/` package).

Files: `protocol.py` (request bodies), `params.py` (body -> SamplingParams), `generation.py`
(engine streams merged), `responses.py` (OpenAI response/chunk shapes), `streaming.py` (SSE,
disconnects), `serving.py` (the two generation endpoints), `errors.py` (error envelope),
`middleware.py` (body limit, API key), `registry.py` (served models), `app.py` (routes),
`handle.py` (background server), `cli.py` (`workbench serve`), `proxy/` (the proxy).

The exports are imported lazily, so `workbench.server.cli` (imported by the `workbench` command)
does not load FastAPI and uvicorn until a server is actually started.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["create_app", "serve", "ServerHandle", "create_proxy_app", "serve_proxy"]

_EXPORTS = {"create_app": "workbench.server.app", "serve": "workbench.server.handle",
            "ServerHandle": "workbench.server.handle",
            "create_proxy_app": "workbench.server.proxy.app",
            "serve_proxy": "workbench.server.proxy.app"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.server' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
