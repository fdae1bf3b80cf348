"""What `/health` answers and what `/metrics` adds to the engines' own families.

`/health` tells the truth to a supervisor or load balancer:
- 200 `{"status": "ok"}` while every served engine can take requests;
- 503 `{"status": "unhealthy", "engines": {served name: reason}}` when an engine is dead (it failed
  and could not recover: `engine.failure`) or closed; a supervisor should restart the process;
- 503 `{"status": "draining"}` while the server is shutting down (it accepts no new requests).

`/metrics` appends, per served engine (labels `model_name`, `engine`):
`workbench:engine_healthy` (1 serving, 0 dead or closed) and `workbench:kv_cache_reserved_bytes`
(KV cache memory the engine holds); and for the process: `workbench:process_resident_memory_bytes`
and `workbench:process_peak_resident_memory_bytes`.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

from workbench.server.registry import ServedModels


def engine_problem(engine: Any) -> str | None:
    """Why `engine` cannot serve (dead or closed), or None."""
    failure = getattr(engine, "failure", None)
    if failure:
        return f"failed and cannot recover: {failure}"
    if getattr(engine, "closed", False):
        return "closed"
    check = getattr(engine, "health_error", None)  # e.g. a lost process of a multi-host job
    error = check() if callable(check) else None
    return f"failed: {error}" if error else None


def problems(served: ServedModels) -> dict[str, str]:
    """{served name: reason} for every engine that cannot serve."""
    out = {}
    for name, engine in served.engines.items():
        reason = engine_problem(engine)
        if reason is not None:
            out[name] = reason
    return out


def kv_reserved_bytes(engine: Any) -> int:
    value = getattr(engine, "kv_cache_bytes", 0)
    value = value() if callable(value) else value
    return int(value or 0)


def rss_bytes() -> int:
    """The process's resident set size now (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def _labels(engine: Any) -> str:
    c = getattr(engine, "collector", None)
    model = getattr(c, "model_name", None) or engine.model.name
    name = getattr(c, "engine", None) or getattr(engine, "engine_name", "?")
    return f'model_name="{_escape(model)}",engine="{_escape(name)}"'


def render_server_metrics(served: ServedModels, prefix: str = "workbench:") -> bytes:
    """Prometheus text of the families in the module docstring."""
    engines = served.distinct()
    lines = [f"# HELP {prefix}engine_healthy 1 while the engine serves, 0 when it is dead or closed",
             f"# TYPE {prefix}engine_healthy gauge"]
    lines += [f"{prefix}engine_healthy{{{_labels(e)}}} {0 if engine_problem(e) else 1}"
              for e in engines]
    lines += [f"# HELP {prefix}kv_cache_reserved_bytes KV cache memory the engine holds",
              f"# TYPE {prefix}kv_cache_reserved_bytes gauge"]
    lines += [f"{prefix}kv_cache_reserved_bytes{{{_labels(e)}}} {kv_reserved_bytes(e)}"
              for e in engines]
    lines += [f"# HELP {prefix}process_resident_memory_bytes resident memory of the process",
              f"# TYPE {prefix}process_resident_memory_bytes gauge",
              f"{prefix}process_resident_memory_bytes {rss_bytes()}",
              f"# HELP {prefix}process_peak_resident_memory_bytes peak resident memory",
              f"# TYPE {prefix}process_peak_resident_memory_bytes gauge",
              f"{prefix}process_peak_resident_memory_bytes {peak_rss_bytes()}"]
    return ("\n".join(lines) + "\n").encode()
