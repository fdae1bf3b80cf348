"""`ProxyRuntime`: a validated `ProxyConfig` turned into live backends and routes.

- One backend per upstream (entries with the same url and api_key_env share it: one connection
  pool, one health state) and one per local engine object (the same object in two routes is one
  backend). Backend names are unique: default names that clash get a suffix (`#2`), an explicit
  name used for two different backends is a ValueError naming the field.
- Upstream keys are read from the environment here (a variable that is not set is a ValueError).
- `start()` / `stop()` run on the app's event loop: open and close the upstreams' connection pools,
  start and cancel one health-probe task per backend (`health.probe_loop`).
- `resolve(model) -> Route`: like the server's, a missing model selects the only route; an unknown
  one is a 404 `model_not_found`.
- `health()`: "ok" (every backend up), "degraded" (some down) or "unavailable" (none up), and per
  route how many of its backends are up (no URLs, no names: /health is open).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from workbench.server.errors import APIError, bad_request
from workbench.server.proxy.backend import Backend, Target
from workbench.server.proxy.health import BackendHealth, probe_loop
from workbench.server.proxy.local import LocalEngine
from workbench.server.proxy.metrics import ProxyMetrics
from workbench.server.proxy.router import Route
from workbench.server.proxy.spec import EngineSpec, ProxyConfig, Timeouts, UpstreamSpec
from workbench.server.proxy.upstream import Upstream


class ProxyRuntime:
    """See the module docstring."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics):
        self.config = config
        self.metrics = metrics
        self.backends: dict[str, Backend] = {}  # by name
        self._by_key: dict[Any, Backend] = {}
        self.routes: dict[str, Route] = {}
        for route in config.routes.values():
            targets = []
            for i, spec in enumerate(route.backends):
                path = f"routes.{route.name}.backends[{i}]"
                if isinstance(spec, UpstreamSpec):
                    backend = self._upstream(spec, path)
                    target = Target(backend, spec.model, spec.timeouts, spec.weight)
                elif isinstance(spec, EngineSpec):
                    backend = self._local(spec, path)
                    target = Target(backend, None, Timeouts(), spec.weight)
                else:
                    raise ValueError(f"{path}.local: build the engine first (`workbench proxy` "
                                     "does; in Python pass the engine object)")
                metrics.series(route.name, backend.name)  # every series shows at 0
                targets.append(target)
            self.routes[route.name] = Route(route.name, targets, route.strategy)
        self.engines = {b.name: b.engine for b in self.backends.values()
                        if isinstance(b, LocalEngine)}
        self._tasks: list[asyncio.Task] = []

    # ---- building ---------------------------------------------------------------------------
    def _health(self, name: str) -> BackendHealth:
        h = self.config.health
        self.metrics.set_up(name, True)
        return BackendHealth(name, max_fails=h.max_fails, cooldown=h.cooldown,
                             on_change=lambda up: self.metrics.set_up(name, up))

    def _unique_name(self, explicit: str | None, default: str, path: str) -> str:
        if explicit is not None:
            if explicit in self.backends:
                raise ValueError(f"{path}.name: {explicit!r} already names another backend")
            return explicit
        name, n = default, 1
        while name in self.backends:
            n += 1
            name = f"{default}#{n}"
        return name

    def _upstream(self, spec: UpstreamSpec, path: str) -> Backend:
        backend = self._by_key.get(spec.upstream_key)
        if backend is None:
            name = self._unique_name(spec.name, spec.default_name, path)
            try:
                backend = Upstream(spec, name, self._health(name), self.config.health.timeout)
            except ValueError as exc:
                raise ValueError(f"{path}.{exc}") from None
            self._by_key[spec.upstream_key] = self.backends[name] = backend
        return backend

    def _local(self, spec: EngineSpec, path: str) -> Backend:
        backend = self._by_key.get(id(spec.engine))
        if backend is None:
            name = self._unique_name(spec.name, spec.default_name, path)
            backend = LocalEngine(spec.engine, name, self._health(name))
            self._by_key[id(spec.engine)] = self.backends[name] = backend
        return backend

    # ---- serving ----------------------------------------------------------------------------
    def resolve(self, model: Any) -> Route:
        if model is None:
            if len(self.routes) == 1:
                return next(iter(self.routes.values()))
            raise bad_request(f"'model' is required: this proxy serves {', '.join(self.routes)}",
                              "model", "missing_required_parameter")
        if not isinstance(model, str):
            raise bad_request(f"Invalid value for 'model': expected a string, got "
                              f"{type(model).__name__}", "model")
        route = self.routes.get(model)
        if route is None:
            raise APIError(404, f"The model '{model}' does not exist; served models: "
                           f"{', '.join(self.routes)}", param="model", code="model_not_found")
        return route

    def health(self) -> dict[str, Any]:
        models = {name: {"backends_up": sum(t.backend.health.up for t in r.targets),
                         "backends": len(r.targets)} for name, r in self.routes.items()}
        up = [b.health.up for b in self.backends.values()]
        status = "ok" if all(up) else ("degraded" if any(up) else "unavailable")
        return {"status": status, "models": models}

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        interval = self.config.health.interval
        self._tasks = [asyncio.create_task(probe_loop(b.health, b.probe, interval),
                                           name=f"workbench-proxy-probe-{b.name}")
                       for b in self.backends.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for backend in self.backends.values():
            with contextlib.suppress(Exception):
                await backend.stop()
