"""Bench tab (Panel): the load generator against chosen engines, directly or over HTTP; a table of
vLLM-style metrics and bar charts of output tok/s and TTFT."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import StatusLine, sync_engines
from widgets.formatting import html_table
from widgets.presenters import BENCH_COLUMNS, bench_charts, parse_rate
from widgets.tasks import Tasks


class BenchPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("bench")
        self.tasks = Tasks(self.status.error, "dashboard-bench")
        self.engines = pn.widgets.MultiChoice(name="engines", options=[], width=300)
        self.via = pn.widgets.Select(name="via", options=["direct", "http"], value="direct",
                                     width=100)
        self.num_requests = pn.widgets.IntInput(name="requests", value=32, start=1, end=10000,
                                                width=100, css_classes=["wb-bench-requests"])
        self.rate = pn.widgets.TextInput(name="rate (req/s)", value="inf", width=100)
        self.concurrency = pn.widgets.IntInput(name="concurrency", value=8, start=1, end=1024,
                                               width=100)
        self.max_tokens = pn.widgets.IntInput(name="max tokens", value=32, start=1, end=4096,
                                              width=100, css_classes=["wb-bench-max-tokens"])
        self.run_button = pn.widgets.Button(name="Run benchmark", button_type="primary",
                                            width=130)
        self.progress = pn.indicators.Progress(value=0, max=1, width=300)
        self.table = pn.pane.HTML("", sizing_mode="stretch_width")
        self.charts = pn.Row(pn.pane.HTML(""), pn.pane.HTML(""))
        self.results = []
        self.run_button.on_click(lambda _: self.run())
        self.refresh()

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)

    def run(self) -> None:
        if self.tasks.busy:
            self.status.error("a benchmark is running")
            return
        try:
            rate = parse_rate(self.rate.value)
            engines = list(self.engines.value)
            if not engines:
                raise ValueError("select at least one engine")
        except ValueError as e:
            self.status.error(str(e))
            return
        self.tasks.run(self._run, engines, rate)

    def _run(self, engines, rate) -> None:
        n = self.num_requests.value
        self.progress.max, self.progress.value = n * len(engines), 0
        self.run_button.disabled = True
        self.status.ok(f"running {n} requests on {', '.join(engines)} ({self.via.value})...")
        done: dict[str, int] = {}

        def on_result(engine, d, total):
            done[engine] = d
            self.progress.value = sum(done.values())

        try:
            self.results = self.wb.bench(engines, via=self.via.value, num_requests=n,
                                         request_rate=rate,
                                         max_concurrency=self.concurrency.value,
                                         max_tokens=self.max_tokens.value, on_result=on_result)
        finally:
            self.run_button.disabled = False
        self.table.object = html_table([r.row() for r in self.results], BENCH_COLUMNS)
        for pane, svg in zip(self.charts.objects, bench_charts(self.results)):
            pane.object = svg
        self.status.ok("done")

    def __panel__(self):
        return pn.Column(pn.Row(self.engines, self.via, self.num_requests, self.rate,
                                self.concurrency, self.max_tokens),
                         pn.Row(self.run_button, self.progress), self.status.pane, self.table,
                         self.charts, sizing_mode="stretch_width")
