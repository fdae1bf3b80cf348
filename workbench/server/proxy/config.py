"""The proxy's routes: public model name -> ordered backends, validated once, at load.

A config is a mapping (a YAML or JSON file, or a dict in Python):

    routes:
      smol:                                 # the public model name clients send
        strategy: failover                  # failover (in order, default) | least_busy
        backends:
          - url: http://127.0.0.1:8001/v1   # an upstream: its OpenAI base URL
            model: SmolLM2-135M-Instruct    # the upstream's name for the model (default: smol)
            api_key_env: UPSTREAM_A_KEY     # optional: the environment variable holding its key
            name: a                         # optional: label in metrics (default: host:port)
            timeouts: {connect: 5, first_byte: 60, total: 600}    # seconds (these defaults)
            max_connections: 256            # the upstream's connection pool (shared by routes)
            health_path: /models            # probed GET, relative to url (default /models)
          - local: {model: embedded, engine: vsurge, max_model_len: 512}  # built by the CLI
            weight: 2                       # least_busy only
    health: {interval: 5, timeout: 2, cooldown: 5, max_fails: 1}          # these defaults

In Python a route may also be a bare list of backends, and a backend an engine object (served in
this process) or `{"engine": engine, "name": ..., "weight": ...}`.

Contract:
- `parse_config(obj) -> ProxyConfig` and `load_config(path)` (.json, .yaml, .yml) raise ValueError
  naming the field (`routes.smol.backends[1].timeouts.connect must be > 0, got -1`) for any bad
  value or unknown key. Nothing is accepted and ignored: `weight` under strategy `failover` is an
  error, and so is an `api_key` field (keys never live in config files: name a variable).
- Entries of one upstream (same url and api_key_env) must agree on its pool size, name and
  health path. Names are unique: a clash of default names gets a suffix (`#2`).
- What each field means: `spec.py`.
This module is plain Python (no FastAPI, no httpx); only a `local:` entry with knobs imports its
engine's module (and JAX), to check the knob names.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from workbench.server.proxy.spec import (DEFAULT_HEALTH, DEFAULT_TIMEOUTS, BackendSpec,
                                         EngineSpec, HealthSpec, LocalSpec, ProxyConfig,
                                         RouteSpec, Timeouts, UpstreamSpec)

__all__ = ["parse_config", "load_config", "ProxyConfig"]


def _fields(path: str, obj: Any, known: tuple[str, ...], required: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} must be a mapping, got {type(obj).__name__}")
    for key in obj:
        if key == "api_key":
            raise ValueError(f"{path}.api_key: never write a key in the config; name the "
                             "environment variable that holds it with api_key_env")
        if key not in known:
            raise ValueError(f"{path}: unknown field {key!r}; known fields: {', '.join(known)}")
    for key in required:
        if key not in obj:
            raise ValueError(f"{path}.{key} is required")
    return dict(obj)


def _build(path: str, cls: type, **kwargs: Any) -> Any:
    """cls(**kwargs) with the ValueError's field prefixed by `path`."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}.{exc}") from None


def _parse_backend(path: str, obj: Any, route: str) -> BackendSpec:
    if hasattr(obj, "astream"):  # an engine object
        return _build(path, EngineSpec, engine=obj)
    if isinstance(obj, Mapping) and "engine" in obj and not isinstance(obj["engine"], str) \
            and "local" not in obj:
        f = _fields(path, obj, ("engine", "name", "weight"))
        return _build(path, EngineSpec, **f)
    if isinstance(obj, Mapping) and "local" in obj:
        f = _fields(path, obj, ("local", "name", "weight"))
        local = f.pop("local")
        if not isinstance(local, Mapping):
            raise ValueError(f"{path}.local must be a mapping {{model, engine, dtype, knobs...}}, "
                             f"got {type(local).__name__}")
        knobs = dict(local)
        spec = {k: knobs.pop(k) for k in ("model", "engine", "dtype") if k in knobs}
        _build(path, LocalSpec, **f)  # name and weight errors name the entry itself
        return _build(f"{path}.local", LocalSpec, **spec, knobs=knobs, **f)
    known = ("url", "model", "api_key_env", "name", "weight", "timeouts", "max_connections",
             "health_path")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} must be an upstream {{url: ..., model: ...}}, a local "
                         f"{{local: {{...}}}} or an engine object, got {type(obj).__name__}")
    f = _fields(path, obj, known, required=("url",))
    f.setdefault("model", route)
    if "timeouts" in f:
        t = _fields(f"{path}.timeouts", f["timeouts"], tuple(DEFAULT_TIMEOUTS))
        f["timeouts"] = _build(f"{path}.timeouts", Timeouts, **t)
    return _build(path, UpstreamSpec, **f)


def _parse_route(name: Any, obj: Any) -> RouteSpec:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"routes: model names must be non-empty strings, got {name!r}")
    path = f"routes.{name}"
    if isinstance(obj, (list, tuple)):
        obj = {"backends": obj}
    f = _fields(path, obj, ("backends", "strategy"), required=("backends",))
    if not isinstance(f["backends"], (list, tuple)):
        raise ValueError(f"{path}.backends must be a list, got {type(f['backends']).__name__}")
    backends = tuple(_parse_backend(f"{path}.backends[{i}]", b, name)
                     for i, b in enumerate(f["backends"]))
    route = _build(path, RouteSpec, name=name, backends=backends,
                   strategy=f.get("strategy", "failover"))
    if route.strategy == "failover":
        for i, b in enumerate(backends):
            if isinstance(f["backends"][i], Mapping) and "weight" in f["backends"][i]:
                raise ValueError(f"{path}.backends[{i}].weight applies to strategy least_busy "
                                 "only (failover tries backends in order)")
    return route


def _check_upstreams(routes: Mapping[str, RouteSpec]) -> None:
    """One pool per (url, api_key_env): its entries must agree on pool size and name."""
    first: dict[tuple[str, str | None], tuple[str, UpstreamSpec]] = {}
    for r in routes.values():
        for i, b in enumerate(r.backends):
            if not isinstance(b, UpstreamSpec):
                continue
            path = f"routes.{r.name}.backends[{i}]"
            seen = first.setdefault(b.upstream_key, (path, b))
            for field in ("max_connections", "name", "health_path"):
                if getattr(b, field) != getattr(seen[1], field) and (
                        field != "name" or b.name is not None):
                    raise ValueError(f"{path}.{field}: {getattr(b, field)!r} disagrees with "
                                     f"{seen[0]}.{field} ({getattr(seen[1], field)!r}) for the "
                                     f"same upstream {b.url}")


def parse_config(obj: Any) -> ProxyConfig:
    """A ProxyConfig from a mapping (see the module docstring); a ProxyConfig is returned as is."""
    if isinstance(obj, ProxyConfig):
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"the proxy config must be a mapping, got {type(obj).__name__}")
    if "routes" in obj and set(obj) <= {"routes", "health"}:
        full = obj
    else:  # shorthand: {model name: route}
        full = {"routes": obj}
    routes_obj = full["routes"]
    if not isinstance(routes_obj, Mapping) or not routes_obj:
        raise ValueError("routes must be a non-empty mapping {model name: route}")
    routes = {name: _parse_route(name, r) for name, r in routes_obj.items()}
    _check_upstreams(routes)
    health = HealthSpec()
    if full.get("health") is not None:
        h = _fields("health", full["health"], tuple(DEFAULT_HEALTH))
        health = _build("health", HealthSpec, **h)
    return ProxyConfig(routes=routes, health=health)


def load_config(path: str | os.PathLike) -> ProxyConfig:
    """Read and validate a .json, .yaml or .yml config file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".yaml", ".yml"):
        raise ValueError(f"{path}: the config must be a .json, .yaml or .yml file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    try:
        if ext == ".json":
            obj = json.loads(text)
        else:
            import yaml

            obj = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_config(obj)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
