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
- Timeouts: `connect` bounds opening a connection; `first_byte` bounds a streamed request until
  its first event; `total` bounds the whole request, streamed or not (a non-streamed response
  comes as one piece, so only `connect` and `total` apply to it).
- Upstream entries with the same (url, api_key_env) are one upstream: one connection pool, one
  health state, one name. Names are unique: a clash of default names gets a suffix (`#2`).
- `LocalSpec` (a `local:` entry) describes an engine to build; `workbench proxy` builds them
  (`ProxyConfig.with_engines`), `create_proxy_app` needs engine objects.
This module is plain Python (no FastAPI, no httpx); only a `local:` entry with knobs imports its
engine's module (and JAX), to check the knob names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping
from urllib.parse import urlsplit

STRATEGIES = ("failover", "least_busy")
DEFAULT_TIMEOUTS = {"connect": 5.0, "first_byte": 60.0, "total": 600.0}
DEFAULT_HEALTH = {"interval": 5.0, "timeout": 2.0, "cooldown": 5.0, "max_fails": 1}
DEFAULT_MAX_CONNECTIONS = 256


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds; see the module docstring."""

    connect: float = DEFAULT_TIMEOUTS["connect"]
    first_byte: float = DEFAULT_TIMEOUTS["first_byte"]
    total: float = DEFAULT_TIMEOUTS["total"]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _positive(f.name, getattr(self, f.name)))
        if self.first_byte > self.total:
            raise ValueError(f"first_byte ({self.first_byte}) must be <= total ({self.total})")


@dataclasses.dataclass(frozen=True)
class HealthSpec:
    """Background checks: every `interval` s a GET with `timeout`; `max_fails` failures in a row
    (requests or checks) mark an upstream down; it is probed again `cooldown` s later and is up
    once a probe answers 200."""

    interval: float = DEFAULT_HEALTH["interval"]
    timeout: float = DEFAULT_HEALTH["timeout"]
    cooldown: float = DEFAULT_HEALTH["cooldown"]
    max_fails: int = DEFAULT_HEALTH["max_fails"]

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "cooldown"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        _positive_int("max_fails", self.max_fails)


@dataclasses.dataclass(frozen=True)
class UpstreamSpec:
    """An OpenAI-compatible server reached over HTTP."""

    url: str
    model: str
    api_key_env: str | None = None
    name: str | None = None
    weight: float = 1.0
    timeouts: Timeouts = Timeouts()
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    health_path: str = "/models"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {self.url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("url must not carry a query, fragment or credentials "
                             "(name the key's environment variable in api_key_env)")
        object.__setattr__(self, "url", self.url.rstrip("/"))
        _name("model", self.model)
        if self.api_key_env is not None:
            _name("api_key_env", self.api_key_env)
        if self.name is not None:
            _name("name", self.name)
        object.__setattr__(self, "weight", _positive("weight", self.weight))
        _positive_int("max_connections", self.max_connections)
        if not isinstance(self.health_path, str) or not self.health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', got {self.health_path!r}")

    @property
    def upstream_key(self) -> tuple[str, str | None]:
        """Entries with the same key share a connection pool and a health state."""
        return (self.url, self.api_key_env)

    @property
    def default_name(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc or self.url

    def api_key(self) -> str | None:
        """The key from the environment (read when the app is built); ValueError if unset."""
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise ValueError(f"api_key_env: the environment variable {self.api_key_env} is not "
                             "set (or empty)")
        return value


@dataclasses.dataclass(frozen=True)
class LocalSpec:
    """An engine to build in this process: `model` (a load_model source), `engine` (a kind from
    workbench.engines.catalog), `dtype`, and the engine's knobs."""

    model: str = "embedded"
    engine: str = "vinference"
    dtype: str | None = None
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        _name("model", self.model)
        from workbench.engines.catalog import engine_kinds, engine_knobs

        if self.engine not in engine_kinds():
            raise ValueError(f"engine must be one of {', '.join(engine_kinds())}, "
                             f"got {self.engine!r}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.knobs:  # imports the engine's module (and JAX) to read its knobs
            valid = engine_knobs(self.engine)
            for knob in self.knobs:
                if knob not in valid:
                    raise ValueError(f"{knob} is not a knob of {self.engine}; its knobs are "
                                     f"{', '.join(sorted(valid))}")
        if self.name is not None:
            _name("name", self.name)
        object.__setattr__(self, "weight", _positive("weight", self.weight))


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """An engine object served in this process."""

    engine: Any
    name: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        missing = [a for a in ("astream", "tokenizer", "max_model_len", "make_request")
                   if not hasattr(self.engine, a)]
        if missing:
            raise ValueError(f"engine must be a workbench engine (it lacks {', '.join(missing)}), "
                             f"got {type(self.engine).__name__}")
        if self.name is not None:
            _name("name", self.name)
        object.__setattr__(self, "weight", _positive("weight", self.weight))

    @property
    def default_name(self) -> str:
        return f"local:{getattr(self.engine, 'engine_name', type(self.engine).__name__)}"


BackendSpec = UpstreamSpec | LocalSpec | EngineSpec


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    name: str
    backends: tuple[BackendSpec, ...]
    strategy: str = "failover"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.strategy!r}")
        if not self.backends:
            raise ValueError("backends must list at least one backend")


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    routes: Mapping[str, RouteSpec]
    health: HealthSpec = HealthSpec()

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("routes must name at least one model")

    def local_specs(self) -> list[tuple[str, int, LocalSpec]]:
        """(route, index, spec) of every `local:` backend, still to be built."""
        return [(r.name, i, b) for r in self.routes.values() for i, b in enumerate(r.backends)
                if isinstance(b, LocalSpec)]

    def with_engines(self, engines: Mapping[tuple[str, int], Any]) -> ProxyConfig:
        """A copy with each `local:` backend at (route, index) replaced by its built engine."""
        routes = {}
        for r in self.routes.values():
            backends = tuple(
                EngineSpec(engines[(r.name, i)], b.name, b.weight) if isinstance(b, LocalSpec)
                else b for i, b in enumerate(r.backends))
            routes[r.name] = dataclasses.replace(r, backends=backends)
        return dataclasses.replace(self, routes=routes)


# ---- parsing ----------------------------------------------------------------------------------
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
