"""Metrics tab (ipywidgets): live charts of every engine from the workbench's metrics history
(output tok/s, running and waiting requests, TTFT and ITL, KV-cache usage), redrawn once a
second, and a button that sends a load to the engines so there is something to watch. Below
them, for a chosen engine: its KV page map (eSurge) and a chosen request's timeline.

Charts are SVG drawn in Python into HTML widgets (`widgets/svg_chart.py` says why: they render in
Colab, where `push_notebook` does not, with nothing to install)."""

from __future__ import annotations

import ipywidgets as w

from widgets.forms import set_options
from widgets.jupyter.common import Status
from widgets.state.metrics import MetricsState
from widgets.svg_chart import line_chart
from widgets.tasks import Ticker

WINDOW_S = 120.0
CHARTS = (  # (title, y label, [(field, label suffix, scale)])
    ("output tok/s", "tok/s", [("output_tok_s", "", 1.0)]),
    ("requests running / waiting", "requests", [("running", "", 1.0),
                                                ("waiting", " wait", 1.0)]),
    ("TTFT (mean per interval)", "ms", [("ttft_ms", "", 1.0)]),
    ("inter-token latency", "ms", [("itl_ms", "", 1.0)]),
    ("KV cache usage", "%", [("kv_usage", "", 100.0)]),
)


def chart_series(history, engines, fields, window_s: float = WINDOW_S):
    """[(label, xs, ys)] over the last `window_s` seconds, one series per engine and field."""
    out = []
    for engine in engines:
        cols = history.series(engine)
        if not cols["t"]:
            continue
        t_end = cols["t"][-1]
        keep = [i for i, t in enumerate(cols["t"]) if t >= t_end - window_s]
        xs = [cols["t"][i] for i in keep]
        for field, suffix, scale in fields:
            ys = [None if cols[field][i] is None else scale * cols[field][i] for i in keep]
            out.append((engine + suffix, xs, ys))
    return out


def draw_charts(history, engines) -> list[str]:
    return [line_chart(chart_series(history, engines, fields), title=title, y_label=unit)
            for title, unit, fields in CHARTS]


class MetricsView(w.VBox):
    def __init__(self, wb, interval: float = 1.0, live: bool = True):
        self.wb = wb
        self.status = Status()
        self.state = MetricsState(wb, self.status.show)
        self.tasks = self.state.tasks
        self.charts = [w.HTML() for _ in CHARTS]
        self.load_requests = w.BoundedIntText(value=16, min=1, max=1000,
                                              description="requests",
                                              layout=w.Layout(width="180px"))
        self.load_button = w.Button(description="Send a load", icon="bolt",
                                    tooltip="requests to every engine, 4 at a time")
        self.load_button.on_click(lambda _: self.state.send_load(self.load_requests.value))
        self.engine = w.Dropdown(options=[], description="engine")
        self.request = w.Dropdown(options=[], description="request",
                                  layout=w.Layout(width="360px"))
        self.page_map = w.HTML()
        self.timeline = w.HTML()
        self.engine.observe(lambda _: self.draw_requests(), names="value")
        self.request.observe(lambda _: self.draw_requests(), names="value")
        self.redraws = 0
        self._drawing = False
        self.draw()
        grid = w.GridBox(self.charts, layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(430px, 1fr))"))
        super().__init__([w.HBox([self.load_requests, self.load_button, self.status]), grid,
                          w.HTML("<b>Requests and KV pages</b>"),
                          w.HBox([self.engine, self.request]), self.page_map, self.timeline])
        self._ticker = Ticker(self.draw, interval, "metrics-view") if live else None

    def draw(self) -> None:
        engines = list(self.wb.engines)
        for widget, svg in zip(self.charts, draw_charts(self.wb.history, engines)):
            widget.value = svg
        self.draw_requests()
        self.redraws += 1

    def draw_requests(self) -> None:
        """The engine and request choices, the page map and the chosen request's timeline."""
        if self._drawing:  # a choice changed by the lines below calls back here
            return
        self._drawing = True
        try:
            self._draw_requests()
        finally:
            self._drawing = False

    def _draw_requests(self) -> None:
        set_options(self.engine, self.state.timeline_engines())
        set_options(self.request, self.state.request_choices(self.engine.value))
        self.page_map.value = self.state.page_map_html(self.engine.value, self.request.value)
        self.timeline.value = self.state.timeline_html(self.engine.value, self.request.value)

    def send_load(self, num_requests: int = 16) -> None:
        """Blocking version of the button (for notebooks)."""
        self.state.send_load(num_requests)
        self.state.wait()

    def refresh(self) -> None:
        self.draw()

    def close_view(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
