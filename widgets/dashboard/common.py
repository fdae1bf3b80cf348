"""Pieces the Panel views share: a status pane (the callback tab states report to), sampling
widgets from `forms.SAMPLING_FIELDS`, and engine selectors kept in step with the workbench.

Threads: tab states run their work in background tasks and call their view's redraw from there;
setting a Panel widget's `.value` or a pane's `.object` from that thread is safe (Panel schedules
the change on the session's event loop). Bokeh data sources are only changed from periodic
callbacks (the session's own loop).
"""

from __future__ import annotations

import panel as pn

from widgets.forms import SAMPLING_FIELDS
from widgets.formatting import status_html


class StatusLine:
    """A status pane; `show(text, error)` is the callback tab states report to."""

    def __init__(self, name: str):
        self.pane = pn.pane.HTML("", css_classes=[f"wb-status-{name}"], min_height=20)

    def show(self, text: str, error: bool = False) -> None:
        self.pane.object = status_html(text, error=error)


def sampling_widgets(only: tuple[str, ...] | None = None, **defaults) -> dict:
    out = {}
    for name, (default, kind, rng) in SAMPLING_FIELDS.items():
        if only is not None and name not in only:
            continue
        value = defaults.get(name, default)
        css = [f"wb-sampling-{name}"]
        if kind == "float":
            out[name] = pn.widgets.FloatSlider(name=name, value=value, start=rng[0], end=rng[1],
                                               step=0.05, width=200, css_classes=css)
        elif kind == "int":
            out[name] = pn.widgets.IntInput(name=name, value=value, start=rng[0], end=rng[1],
                                            width=120, css_classes=css)
        elif kind == "bool":
            out[name] = pn.widgets.Checkbox(name=name, value=value, css_classes=css)
        elif kind == "lines":
            out[name] = pn.widgets.TextAreaInput(name="stop (one per line)", value=value,
                                                 height=60, width=200, css_classes=css)
        else:
            out[name] = pn.widgets.TextInput(name=name, value=value, placeholder="random",
                                             width=120, css_classes=css)
    return out


def values(fields: dict) -> dict:
    return {name: widget.value for name, widget in fields.items()}


def sync_engines(wb, widget, select_all: bool = False) -> None:
    """Make a Select / MultiChoice list the workbench's engines (keeping the selection)."""
    names = list(wb.engines)
    if list(widget.options) == names:
        return
    if isinstance(widget.value, list):
        keep = [n for n in widget.value if n in names]
        widget.options = names
        widget.value = names if (select_all or not keep) else keep
    else:
        current = widget.value
        widget.options = names
        widget.value = current if current in names else (names[0] if names else None)
