"""Bench tab: the load generator (`workbench.loadgen`, what `workbench bench` runs) against the
chosen engines, directly or over HTTP; a table of vLLM-style metrics and bar charts of output
tok/s and TTFT per engine."""

from __future__ import annotations

import ipywidgets as w

from widgets.formatting import html_table
from widgets.presenters import BENCH_COLUMNS, bench_charts, parse_rate
from widgets.jupyter.common import EngineSelect, Status
from widgets.tasks import Tasks

class BenchView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.tasks = Tasks(self.status.error, "bench")
        self.engines = w.SelectMultiple(description="engines", rows=4)
        self.engine_select = EngineSelect(wb, self.engines, select_all=True)
        self.via = w.Dropdown(options=["direct", "http"], value="direct", description="via")
        self.num_requests = w.BoundedIntText(value=32, min=1, max=10000, description="requests")
        self.rate = w.Text(value="inf", description="rate (req/s)")
        self.concurrency = w.BoundedIntText(value=8, min=1, max=1024,
                                            description="concurrency")
        self.max_tokens = w.BoundedIntText(value=32, min=1, max=4096, description="max tokens")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="progress")
        self.table = w.HTML()
        self.charts = w.HBox([w.HTML(), w.HTML()])
        self.results = []
        self.run_button.on_click(lambda _: self.run())
        super().__init__([
            w.HBox([self.engines, w.VBox([self.via, self.num_requests, self.rate]),
                    w.VBox([self.concurrency, self.max_tokens])]),
            w.HBox([self.run_button, self.progress]), self.status, self.table, self.charts])

    def refresh(self) -> None:
        self.engine_select.refresh()

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
        self.table.value = html_table([r.row() for r in self.results], BENCH_COLUMNS)
        for widget, svg in zip(self.charts.children, bench_charts(self.results)):
            widget.value = svg
        self.status.ok("done (warm-up excluded: " + ", ".join(
            f"{r.target} {r.warmup_s:.1f} s" for r in self.results) + ")")
