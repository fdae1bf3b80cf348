"""An OpenAI proxy with mixed backends: one endpoint that routes by model name to local engines
and upstream OpenAI-compatible servers, streams through, fails over, checks health, and counts.

- `create_proxy_app(routes, *, api_key=None, ...) -> FastAPI`, `serve_proxy(routes, host=
  "127.0.0.1", port=0, ...) -> ServerHandle` (`app.py`)
- `parse_config(obj)`, `load_config(path) -> ProxyConfig` (`config.py`: the config's format)

Files: `spec.py` (what a route is), `config.py` (the format, parsed and validated), `backend.py`
(the backend contract, one call, one attempt), `upstream.py` (an upstream server over httpx),
`local.py` (an engine in this process), `sse.py` (reading upstream events), `health.py` (up/down,
cooldown, probes), `router.py` (order of backends, failover), `metrics.py` (Prometheus),
`runtime.py` (config -> live backends), `app.py` (routes, lifecycle), `cli.py` (`workbench
proxy`).

Exports are imported lazily: `workbench.server.proxy.cli` (imported by the `workbench` command)
loads neither FastAPI nor httpx until the proxy starts.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["create_proxy_app", "serve_proxy", "parse_config", "load_config", "ProxyConfig"]

_EXPORTS = {"create_proxy_app": "workbench.server.proxy.app",
            "serve_proxy": "workbench.server.proxy.app",
            "parse_config": "workbench.server.proxy.config",
            "load_config": "workbench.server.proxy.config",
            "ProxyConfig": "workbench.server.proxy.spec"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.server.proxy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
