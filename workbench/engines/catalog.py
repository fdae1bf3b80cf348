"""The engine kinds by name: one place that maps "vinference" / "vsurge" / ... to a class.

The CLI (`--engine`), the server and the `Workbench` facade all build engines through here, so a new
engine is registered once (add it to `ENGINES`).

- `engine_kinds() -> tuple[str, ...]`: the registered names, in display order.
- `engine_class(kind) -> type`: imported lazily; ValueError naming the known kinds for an unknown one.
- `engine_knobs(kind) -> dict[str, default]`: the keyword arguments its constructor takes after the
  model (what a UI offers as knobs).
- `check_knobs(kind, knobs)`: ValueError naming an unknown knob (and the valid ones) or a value
  of none of the types the constructor declares for it (the same types `parse_knob` reads
  text by). Ranges are validated by the engine's constructor itself.
- `parse_knob(kind, "name=value") -> (name, value)`: one knob from a command line (`workbench
  serve --engine-arg`); `parse_knob_value(kind, name, text)` its value alone (the UI's knob
  boxes). The value is read by the types the constructor declares for it (`int |
  None`: a number or `none`; a bool: true/false/yes/no/on/off; a tuple: comma-separated ints;
  a str: the text). Dashes in the name read as underscores (`max-num-seqs=16`). ValueError
  names the knob and what it takes.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import types
import typing
from typing import Any

from workbench.engines.buckets import is_int

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
    """Unknown knobs, and values of none of the types the constructor declares for the knob
    (`_knob_types`: `int | None` takes an int or None, never a bool; a float knob takes an int
    too; a tuple knob a list too), raise ValueError naming the knob and what it takes."""
    types_of = _knob_types(kind)
    unknown = sorted(set(knobs) - set(types_of))
    if unknown:
        raise ValueError(f"{kind} has no knob {unknown[0]!r}; its knobs are "
                         f"{', '.join(sorted(types_of))}")
    for name, value in knobs.items():
        kinds = types_of[name]
        if not any(_is(value, t) for t in kinds):
            raise ValueError(f"{kind} knob {name!r} must be {_describe(kinds, _VALUE_NAMES)}, "
                             f"got {value!r}")


def _is(value: Any, t: type) -> bool:
    """Whether `value` may be passed where the constructor declares `t`."""
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return is_int(value)
    if t is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if t is tuple:
        return isinstance(value, (tuple, list))
    if isinstance(t, type):
        return isinstance(value, t)
    return True  # an annotation that is not a class: the constructor checks the value


_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")
# what each declared type takes, said for text (`parse_knob`) and for Python values (`check_knobs`)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text",
          tuple: "comma-separated integers"}
_VALUE_NAMES = {bool: "a bool", int: "an integer", float: "a number", str: "a string",
                tuple: "a tuple or list of integers", type(None): "None"}


def _describe(kinds: tuple[type, ...], names: dict = _NAMES) -> str:
    return " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in kinds)


def _knob_types(kind: str) -> dict[str, tuple[type, ...]]:
    """Each knob's accepted types, from the constructor's annotations (`int | None` ->
    (int, NoneType)), or the default's type where there is no annotation."""
    init = engine_class(kind).__init__
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated: use defaults
        hints = {}
    out = {}
    for name, default in engine_knobs(kind).items():
        hint = hints.get(name)
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                                                                     types.UnionType) else ()
        found = tuple(typing.get_origin(a) or a for a in args) if args else (
            (typing.get_origin(hint) or hint,) if hint is not None else (type(default),))
        out[name] = found
    return out


def _read(raw: str, kinds: tuple[type, ...]) -> Any:
    low = raw.lower()
    if type(None) in kinds and low in ("none", "null"):
        return None
    for t in (bool, int, float, tuple, str):  # the most specific reading first
        if t not in kinds:
            continue
        if t is bool and low in _TRUE + _FALSE:
            return low in _TRUE
        if t is bool and low in ("1", "0") and int not in kinds:
            return low == "1"
        if t is int:
            try:
                return int(raw)
            except ValueError:
                pass
        if t is float:
            try:
                return float(raw)
            except ValueError:
                pass
        if t is tuple:
            try:
                return tuple(int(x) for x in raw.split(",") if x.strip())
            except ValueError:
                pass
        if t is str:
            return raw
    raise ValueError(_describe(tuple(t for t in kinds if t is not type(None))))


def parse_knob_value(kind: str, name: str, text: str) -> Any:
    """One knob's value from text (a command line, a UI text box), read by its declared types;
    ValueError naming the knob and what it takes."""
    known = _knob_types(kind)
    if name not in known:
        raise ValueError(f"{kind} has no knob {name!r}; its knobs are {', '.join(sorted(known))}")
    raw = text.strip()
    try:
        return _read(raw, known[name])
    except ValueError as exc:
        raise ValueError(f"{kind} knob {name!r} must be {exc}, got {raw!r}") from None


def parse_knob(kind: str, text: str) -> tuple[str, Any]:
    """See the module docstring."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise ValueError(f"an engine argument looks like name=value, got {text!r}")
    return name, parse_knob_value(kind, name, raw)
