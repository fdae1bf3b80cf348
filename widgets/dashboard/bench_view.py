"""Bench tab (Panel): the load generator against chosen engines, directly or over HTTP; a table of
vLLM-style metrics and bar charts of output tok/s and TTFT. Logic: `widgets.state.bench`."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import OnSession, StatusLine, sync_engines
from widgets.state.bench import BenchState


class BenchPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("bench")
        self.state = BenchState(wb, self.status.show, OnSession(self.redraw))
        self.engines = pn.widgets.MultiChoice(label="engines", options=[], width=300)
        self.via = pn.widgets.Select(label="via", options=["direct", "http"], value="direct",
                                     width=100)
        self.num_requests = pn.widgets.IntInput(label="requests", value=32, start=1, end=10000,
                                                width=100, css_classes=["wb-bench-requests"])
        self.rate = pn.widgets.TextInput(label="rate (req/s)", value="inf", width=100)
        self.concurrency = pn.widgets.IntInput(label="concurrency", value=8, start=1, end=1024,
                                               width=100)
        self.max_tokens = pn.widgets.IntInput(label="max tokens", value=32, start=1, end=4096,
                                              width=100, css_classes=["wb-bench-max-tokens"])
        self.run_button = pn.widgets.Button(label="Run benchmark", color="primary",
                                            width=130)
        self.progress = pn.indicators.Progress(value=0, max=1, width=300)
        self.table = pn.pane.HTML("", sizing_mode="stretch_width")
        self.charts = pn.Row(pn.pane.HTML(""), pn.pane.HTML(""))
        self.run_button.on_click(lambda _: self.state.run(
            self.engines.value, via=self.via.value, num_requests=self.num_requests.value,
            rate=self.rate.value, max_concurrency=self.concurrency.value,
            max_tokens=self.max_tokens.value))
        self.refresh()

    def redraw(self) -> None:
        self.run_button.disabled = self.state.busy
        self.progress.max, self.progress.value = max(1, self.state.total), self.state.done
        self.table.object = self.state.table_html()
        for pane, svg in zip(self.charts.objects, self.state.charts()):
            pane.object = svg

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)

    def __panel__(self):
        return pn.Column(pn.Row(self.engines, self.via, self.num_requests, self.rate,
                                self.concurrency, self.max_tokens),
                         pn.Row(self.run_button, self.progress), self.status.pane, self.table,
                         self.charts, sizing_mode="stretch_width")
