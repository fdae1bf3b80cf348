"""Seconds this process spends compiling, as JAX reports them through `jax.monitoring`: tracing,
lowering and the XLA compile (or the load from the persistent compilation cache) of every new
shape, on whichever thread compiles it.

An engine compiles its shapes when it first meets them, so the first run of a new workload
(a comparison, a benchmark) times compiling as well as serving. `run_comparison` reads these
totals around each engine's run and reports them (`EngineRun.compile_s`), so a cold engine is
not mistaken for a slow one.

- `install()`: registers the listener (once; idempotent; cheap).
- `totals() -> (compiles, seconds)`: process-wide (every engine, every thread), counted from
  `install()`; callers take differences.
"""

from __future__ import annotations

import threading

import jax

# jax._src.dispatch's names for the three phases of compiling one shape
EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
          "/jax/core/compile/jaxpr_to_mlir_module_duration",
          "/jax/core/compile/backend_compile_duration")
_BACKEND = EVENTS[-1]

_lock = threading.Lock()
# the listener JAX holds; read back from the module's own namespace so that `importlib.reload`
# (a notebook's autoreload) does not register a second one counting everything twice
_registered = globals().get("_registered")
_compiles = 0
_seconds = 0.0


def _listener(event: str, duration_s: float, **_) -> None:
    global _compiles, _seconds
    if event in EVENTS:
        with _lock:
            _seconds += duration_s
            _compiles += event == _BACKEND


def install() -> None:
    global _registered
    with _lock:
        if _registered is None:
            jax.monitoring.register_event_duration_secs_listener(_listener)
            _registered = _listener


def totals() -> tuple[int, float]:
    """(backend compiles, seconds of tracing + lowering + compiling) since `install()`."""
    with _lock:
        return _compiles, _seconds
