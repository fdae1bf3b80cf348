"""Small pieces the ipywidgets views share: a status line, sampling-parameter widgets, an engine
selector that follows the workbench's engines."""

from __future__ import annotations

import ipywidgets as w

from widgets.formatting import status_html
from widgets.forms import SAMPLING_FIELDS

WIDE = w.Layout(width="98%")


class Status(w.HTML):
    """A one-line status; `show(text, error)` is the callback tab states report to."""

    def show(self, text: str, error: bool = False) -> None:
        self.value = status_html(text, error=error)


def sampling_widgets(only: tuple[str, ...] | None = None, **defaults) -> dict[str, w.Widget]:
    """One widget per sampling field (`forms.SAMPLING_FIELDS`), in display order."""
    out: dict[str, w.Widget] = {}
    style = {"description_width": "120px"}
    for name, (default, kind, rng) in SAMPLING_FIELDS.items():
        if only is not None and name not in only:
            continue
        value = defaults.get(name, default)
        if kind == "float":
            out[name] = w.FloatSlider(value=value, min=rng[0], max=rng[1], step=0.05,
                                      description=name, style=style, readout_format=".2f")
        elif kind == "int":
            out[name] = w.BoundedIntText(value=value, min=rng[0], max=rng[1], description=name,
                                         style=style, layout=w.Layout(width="220px"))
        elif kind == "bool":
            out[name] = w.Checkbox(value=value, description=name, indent=False)
        elif kind == "lines":
            out[name] = w.Textarea(value=value, description="stop", style=style,
                                   placeholder="stop strings, one per line",
                                   layout=w.Layout(width="300px", height="48px"))
        else:
            out[name] = w.Text(value=value, description=name, style=style,
                               placeholder="empty: random", layout=w.Layout(width="220px"))
    return out


def values(fields: dict[str, w.Widget]) -> dict:
    return {name: widget.value for name, widget in fields.items()}


class EngineSelect:
    """Keeps a Dropdown / SelectMultiple's options equal to the workbench's engine names."""

    def __init__(self, wb, widget: w.Widget, select_all: bool = False):
        self.wb, self.widget, self.select_all = wb, widget, select_all
        self.refresh()

    def refresh(self) -> None:
        names = tuple(self.wb.engines)
        if tuple(self.widget.options) == names:
            return
        if isinstance(self.widget, w.SelectMultiple):
            keep = tuple(n for n in self.widget.value if n in names)
            self.widget.options = names
            self.widget.value = names if (self.select_all or not keep) else keep
        else:
            current = self.widget.value
            self.widget.options = names
            self.widget.value = current if current in names else (names[0] if names else None)
