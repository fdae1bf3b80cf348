"""What a proxy config describes: routes (public model name -> ordered backends), each backend an
upstream, a local engine to build, or an engine object; timeouts; health checks. Frozen
dataclasses that check their own fields (`ValueError` whose message starts with the field's name;
`config.py` adds the path to it). The file format and its defaults are described in `config.py`.

Contract worth knowing here:
- Timeouts: `connect` bounds opening a connection; `first_byte` bounds a streamed request until
  its first event; `total` bounds the whole request, streamed or not (a non-streamed response
  comes as one piece, so only `connect` and `total` apply to it).
- Upstream entries with the same (url, api_key_env) are one upstream (`UpstreamSpec.upstream_key`):
  one connection pool, one health state, one name.
- `UpstreamSpec.api_key()` reads the key from the environment when the app is built; the spec
  holds the variable's name only.
- `LocalSpec` (a `local:` entry) describes an engine to build; `workbench proxy` builds them
  (`ProxyConfig.with_engines`), `create_proxy_app` needs engine objects.
Plain Python (no FastAPI, no httpx); only a `LocalSpec` with knobs imports its engine's module
(and JAX), to check the knob names.
"""


from __future__ import annotations

import dataclasses
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
