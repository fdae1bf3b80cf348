"""The engine kinds by name: one place that maps "vinference" / "vsurge" / ... to a class.

The CLI (`--engine`), the server and the `Workbench` facade all build engines through here, so a new
engine is registered once (add it to `ENGINES`).

- `engine_kinds() -> tuple[str, ...]`: the registered names, in display order.
- `engine_class(kind) -> type`: imported lazily; ValueError naming the known kinds for an unknown one.
- `engine_knobs(kind) -> dict[str, default]`: the keyword arguments its constructor takes after the
  model (what a UI offers as knobs).
- `check_knobs(kind, knobs)`: ValueError naming an unknown knob (and the valid ones) or a value
  of the wrong type. Ranges are validated by the engine's constructor itself.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

# name -> "module:Class"
ENGINES: dict[str, str] = {
    "vinference": "workbench.engines.vinference:vInference",
    "vsurge": "workbench.engines.vsurge:vSurge",
    "esurge": "workbench.engines.esurge:eSurge",
}


def engine_kinds() -> tuple[str, ...]:
    return tuple(ENGINES)


def engine_class(kind: str) -> type:
    if kind not in ENGINES:
        raise ValueError(f"unknown engine kind {kind!r}; choose one of {', '.join(ENGINES)}")
    module, _, name = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def engine_knobs(kind: str) -> dict[str, Any]:
    """Constructor keyword arguments (after the model) and their defaults."""
    params = inspect.signature(engine_class(kind).__init__).parameters
    return {n: p.default for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_knobs(kind: str, knobs: dict[str, Any]) -> None:
    """Unknown knobs, and values whose type differs from the default's (a bool where the
    default is a bool, an int where it is an int, ...), raise ValueError naming the knob."""
    valid = engine_knobs(kind)
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise ValueError(f"{kind} has no knob {unknown[0]!r}; its knobs are "
                         f"{', '.join(sorted(valid))}")
    for name, value in knobs.items():
        default = valid[name]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # None default: the constructor checks the value
            ok = True
        if not ok:
            raise ValueError(f"{kind} knob {name!r} must be a {type(default).__name__} like its "
                             f"default {default!r}, got {value!r}")
