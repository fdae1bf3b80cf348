"""Metrics tab (Panel): live Bokeh charts of every engine from the workbench's metrics history
(output tok/s, running and waiting requests, TTFT, ITL, KV-cache usage).

Each engine has one `ColumnDataSource` (named `metrics-<engine>`, so the page and tests can find
it) fed by `tick()`, which the dashboard calls from a periodic callback on the session's own event
loop: `source.stream(new samples, rollover=...)` sends only the new points to the browser. An
engine added later gets its lines on the next tick; a removed one's lines are hidden. Below the
charts, for a chosen engine: its KV page map (eSurge) and a chosen request's timeline, redrawn by
the same tick (once a second) and when a choice changes.
"""

from __future__ import annotations

import math

import panel as pn
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import MISSING_RENDERERS
from bokeh.models import ColumnDataSource
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from widgets.dashboard.common import StatusLine
from widgets.forms import set_options
from widgets.state.metrics import MetricsState

ROLLOVER = 600  # points per engine kept in the browser (5 minutes at 2 Hz)
FIELDS = ("t", "output_tok_s", "running", "waiting", "ttft_ms", "itl_ms", "kv_pct")
CHARTS = (  # (title, y label, [(field, dashed)])
    ("output tok/s", "tok/s", [("output_tok_s", False)]),
    ("requests running (solid) / waiting (dashed)", "requests",
     [("running", False), ("waiting", True)]),
    ("TTFT (mean per interval)", "ms", [("ttft_ms", False)]),
    ("inter-token latency", "ms", [("itl_ms", False)]),
    ("KV cache usage", "%", [("kv_pct", False)]),
)


silence(MISSING_RENDERERS, True)  # a chart has no lines until its first engine


def _nan(x):
    return math.nan if x is None else x


class MetricsPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("metrics")
        self.state = MetricsState(wb, self.status.show)
        self.figures = []
        for title, unit, _ in CHARTS:
            fig = figure(title=title, height=220, width=430, x_axis_label="s",
                         y_axis_label=unit, tools="pan,wheel_zoom,reset,hover",
                         toolbar_location="right")
            fig.y_range.start = 0
            self.figures.append(fig)
        self.sources: dict[str, ColumnDataSource] = {}
        self.renderers: dict[str, list] = {}
        self._seq: dict[str, int] = {}
        self.load_button = pn.widgets.Button(label="Send a load", width=120, align="end")
        self.load_requests = pn.widgets.IntInput(label="requests per engine", value=16, start=1,
                                                 end=1000, width=140,
                                                 css_classes=["wb-load-requests"])
        self.load_button.on_click(lambda _: self.state.send_load(self.load_requests.value))
        self.engine = pn.widgets.Select(label="engine", options=[], width=160,
                                        css_classes=["wb-kv-engine"])
        self.request = pn.widgets.Select(label="request", options=[], width=320,
                                         css_classes=["wb-kv-request"])
        self.page_map = pn.pane.HTML("", css_classes=["wb-page-map-pane"])
        self.timeline = pn.pane.HTML("", css_classes=["wb-timeline-pane"])
        self.engine.param.watch(lambda _: self.draw_requests(), "value")
        self.request.param.watch(lambda _: self.draw_requests(), "value")
        self._drawing = False
        self.ticks = 0
        self.refresh()

    def _add_engine(self, name: str) -> ColumnDataSource:
        source = ColumnDataSource({f: [] for f in FIELDS}, name=f"metrics-{name}")
        color = Category10_10[len(self.sources) % 10]
        lines = []
        for fig, (_, _, fields) in zip(self.figures, CHARTS):
            for field, dashed in fields:
                lines.append(fig.line("t", field, source=source, color=color, line_width=2,
                                      line_dash="dashed" if dashed else "solid",
                                      legend_label=name))
            fig.legend.location = "top_left"
            fig.legend.label_text_font_size = "9pt"
        self.sources[name], self.renderers[name] = source, lines
        self._seq[name] = 0
        return source

    def tick(self) -> None:
        """Stream the samples taken since the last tick (call on the session's event loop)."""
        engines = list(self.wb.engines)
        for name in engines:
            source = self.sources.get(name) or self._add_engine(name)
            for r in self.renderers[name]:
                r.visible = True
            cols, seq = self.wb.history.since(name, self._seq[name])
            self._seq[name] = seq
            if cols["t"]:
                source.stream({
                    "t": cols["t"], "output_tok_s": [_nan(x) for x in cols["output_tok_s"]],
                    "running": cols["running"], "waiting": cols["waiting"],
                    "ttft_ms": [_nan(x) for x in cols["ttft_ms"]],
                    "itl_ms": [_nan(x) for x in cols["itl_ms"]],
                    "kv_pct": [math.nan if x is None else 100 * x for x in cols["kv_usage"]],
                }, rollover=ROLLOVER)
        for name, lines in self.renderers.items():
            if name not in engines:
                for r in lines:
                    r.visible = False
        self.ticks += 1
        if self.ticks % 2 == 0:  # the dashboard ticks at 2 Hz: pages and timeline once a second
            self.draw_requests()

    def draw_requests(self) -> None:
        """The engine and request choices, the page map and the chosen request's timeline."""
        if self._drawing:  # a choice changed by the lines below calls back here
            return
        self._drawing = True
        try:
            set_options(self.engine, self.state.timeline_engines())
            set_options(self.request, self.state.request_choices(self.engine.value))
            for pane, text in (
                    (self.page_map, self.state.page_map_html(self.engine.value,
                                                             self.request.value)),
                    (self.timeline, self.state.timeline_html(self.engine.value,
                                                             self.request.value))):
                if pane.object != text:
                    pane.object = text
        finally:
            self._drawing = False

    def refresh(self) -> None:
        """An engine was added or removed: give it lines (data comes with the next tick)."""
        engines = list(self.wb.engines)
        for name in engines:
            if name not in self.sources:
                self._add_engine(name)
        for name, lines in self.renderers.items():
            for r in lines:
                r.visible = name in engines
        self.draw_requests()

    def __panel__(self):
        return pn.Column(pn.Row(self.load_requests, self.load_button, self.status.pane),
                         pn.GridBox(*[pn.pane.Bokeh(f) for f in self.figures], ncols=2),
                         pn.pane.HTML("<b>Requests and KV pages</b>"),
                         pn.Row(self.engine, self.request), self.page_map, self.timeline)
