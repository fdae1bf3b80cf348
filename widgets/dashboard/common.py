"""Pieces the Panel views share: a status pane (the callback tab states report to), sampling
widgets from `forms.SAMPLING_FIELDS`, and engine selectors kept in step with the workbench.

Threads: tab states run their work in background tasks and call their view back from there. Those
callbacks go through `OnSession`, which runs them on the session's event loop: Panel would
schedule each property change from a thread by itself, but a redraw that replaces children (the
Compare grid) while other changes are in flight can reach the browser out of order ("reference
pNNNN isn't known"). Bokeh data sources are only changed from periodic callbacks (the session's
own loop).
"""

from __future__ import annotations

import logging
import threading

import panel as pn
from panel.io.state import set_curdoc

from widgets.formatting import status_html
from widgets.forms import SAMPLING_FIELDS

logger = logging.getLogger("widgets")


class OnSession:
    """`fn` called on the Bokeh session's event loop. Made while a session is being built (a view's
    constructor); called from the loop's thread, or with no session (a test, a notebook), it runs
    at once; called from another thread it is scheduled with `doc.add_next_tick_callback` (the one
    Document method Bokeh allows from other threads). Calls are coalesced: while one is pending,
    later calls only replace its arguments (a redraw draws the latest state anyway)."""

    def __init__(self, fn):
        self.fn = fn
        self.doc = pn.state.curdoc
        self.thread = threading.get_ident()
        self._lock = threading.Lock()
        self._pending: tuple | None = None

    def __call__(self, *args, **kwargs) -> None:
        doc = self.doc
        if doc is None or doc.session_context is None or threading.get_ident() == self.thread:
            self.fn(*args, **kwargs)
            return
        with self._lock:
            scheduled = self._pending is not None
            self._pending = (args, kwargs)
        if not scheduled:
            try:
                doc.add_next_tick_callback(self._run)
            except Exception:  # noqa: BLE001 - the session is gone: nothing left to draw
                logger.debug("session closed; %s not drawn", self.fn, exc_info=True)

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        args, kwargs = pending or ((), {})
        with set_curdoc(self.doc):
            self.fn(*args, **kwargs)


class StatusLine:
    """A status pane; `show(text, error)` is the callback tab states report to (from any thread)."""

    def __init__(self, name: str):
        self.pane = pn.pane.HTML("", css_classes=[f"wb-status-{name}"], min_height=20)
        self.show = OnSession(self._show)

    def _show(self, text: str, error: bool = False) -> None:
        self.pane.object = status_html(text, error=error)


def sampling_widgets(only: tuple[str, ...] | None = None, **defaults) -> dict:
    out = {}
    for name, (default, kind, rng) in SAMPLING_FIELDS.items():
        if only is not None and name not in only:
            continue
        value = defaults.get(name, default)
        css = [f"wb-sampling-{name}"]
        if kind == "float":
            out[name] = pn.widgets.FloatSlider(label=name, value=value, start=rng[0], end=rng[1],
                                               step=0.05, width=200, css_classes=css)
        elif kind == "int":
            out[name] = pn.widgets.IntInput(label=name, value=value, start=rng[0], end=rng[1],
                                            width=120, css_classes=css)
        elif kind == "bool":
            out[name] = pn.widgets.Checkbox(label=name, value=value, css_classes=css)
        elif kind == "lines":
            out[name] = pn.widgets.TextAreaInput(label="stop (one per line)", value=value,
                                                 height=60, width=200, css_classes=css)
        else:
            out[name] = pn.widgets.TextInput(label=name, value=value, placeholder="random",
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
