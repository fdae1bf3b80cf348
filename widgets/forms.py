"""Form values -> library objects, shared by the ipywidgets views and the Panel dashboard.

Views collect plain values (strings from text boxes, numbers from sliders) and call these; every
bad value raises ValueError naming the field, which the view shows in the page.

- `SAMPLING_FIELDS`: the sampling fields a person sets, with their default, kind and range, in
  display order (views build their widgets from it).
- `sampling_params(values) -> SamplingParams`: a dict of form values (missing -> default; "" in a
  text field -> default; stop strings one per line; seed "" -> None) validated by SamplingParams.
- `knob_fields(kind) -> list[(name, default)]`: an engine kind's constructor knobs.
- `parse_knobs(kind, texts) -> dict`: text-box values -> typed knobs, read by each knob's
  declared types (`catalog.parse_knob_value`: ints, numbers, true/false, comma-separated int
  tuples for bucket lists, text); empty means "engine default".
- `parse_prompts(text) -> list[str]`: one prompt per non-empty line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.engines.catalog import engine_knobs, parse_knob_value
from workbench.sampling_params import SamplingParams

# name: (default, kind, (low, high) for numbers / None)
SAMPLING_FIELDS: dict[str, tuple[Any, str, tuple | None]] = {
    "max_tokens": (64, "int", (1, 4096)),
    "temperature": (0.0, "float", (0.0, 2.0)),
    "top_p": (1.0, "float", (0.01, 1.0)),
    "top_k": (-1, "int", (-1, 1000)),
    "min_p": (0.0, "float", (0.0, 1.0)),
    "presence_penalty": (0.0, "float", (-2.0, 2.0)),
    "frequency_penalty": (0.0, "float", (-2.0, 2.0)),
    "repetition_penalty": (1.0, "float", (0.1, 2.0)),
    "seed": ("", "text", None),
    "stop": ("", "lines", None),
    "ignore_eos": (False, "bool", None),
}

PRESET_PROMPTS = (
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "Explain what a KV cache is in one sentence.",
)


def sampling_params(values: Mapping[str, Any]) -> SamplingParams:
    kw: dict[str, Any] = {}
    for name, (default, kind, _) in SAMPLING_FIELDS.items():
        value = values.get(name, default)
        if kind == "text":  # seed
            text = str(value).strip() if value is not None else ""
            if text:
                try:
                    kw[name] = int(text)
                except ValueError:
                    raise ValueError(f"seed must be an integer or empty, got {text!r}") from None
        elif kind == "lines":  # stop strings, one per line
            lines = [s for s in str(value or "").splitlines() if s]
            if lines:
                kw[name] = lines
        elif kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            kw[name] = value
        else:
            kw[name] = value
    return SamplingParams(**kw)


def knob_fields(kind: str) -> list[tuple[str, Any]]:
    return list(engine_knobs(kind).items())


def parse_knobs(kind: str, texts: Mapping[str, Any]) -> dict[str, Any]:
    """Text-box values -> typed knobs; empty (or None) keeps the engine's default."""
    fields = dict(knob_fields(kind))
    out: dict[str, Any] = {}
    for name, value in texts.items():
        if name not in fields:
            raise ValueError(f"{kind} has no knob {name!r}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, str):
            value = parse_knob_value(kind, name, value)
        out[name] = value
    return out


def parse_prompts(text: str) -> list[str]:
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("enter at least one prompt (one per line)")
    return prompts


def set_options(select, options: list) -> None:
    """Give a single-choice widget (ipywidgets Dropdown or Panel Select: both have `.options`
    and `.value`) new options, keeping the selection when it is still there (else the first)."""
    if list(select.options) == list(options):
        return
    keep = select.value if select.value in options else (options[0] if options else None)
    select.options = list(options)
    select.value = keep
