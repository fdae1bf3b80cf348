"""Bench tab (ipywidgets): the load generator (`workbench.loadgen`, what `workbench bench` runs)
against the chosen engines, directly or over HTTP; a table of vLLM-style metrics and bar charts of
output tok/s and TTFT per engine. Logic: `widgets.state.bench`."""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.common import EngineSelect, Status
from widgets.state.bench import BenchState


class BenchView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.state = BenchState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
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
        self.run_button.on_click(lambda _: self.run())
        super().__init__([
            w.HBox([self.engines, w.VBox([self.via, self.num_requests, self.rate]),
                    w.VBox([self.concurrency, self.max_tokens])]),
            w.HBox([self.run_button, self.progress]), self.status, self.table, self.charts])

    @property
    def results(self):
        return self.state.results

    def run(self) -> None:
        self.state.run(self.engines.value, via=self.via.value,
                       num_requests=self.num_requests.value, rate=self.rate.value,
                       max_concurrency=self.concurrency.value, max_tokens=self.max_tokens.value)
        self.redraw()

    def redraw(self) -> None:
        self.run_button.disabled = self.state.busy
        self.progress.max, self.progress.value = max(1, self.state.total), self.state.done
        self.table.value = self.state.table_html()
        for widget, svg in zip(self.charts.children, self.state.charts()):
            widget.value = svg

    def refresh(self) -> None:
        self.engine_select.refresh()
