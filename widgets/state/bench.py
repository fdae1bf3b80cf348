"""Bench tab: the load generator against chosen engines; progress, a results table and charts."""

from __future__ import annotations

from widgets.formatting import html_table
from widgets.presenters import BENCH_COLUMNS, bench_charts, parse_rate
from widgets.state.base import TabState


class BenchState(TabState):
    name = "bench"

    def __init__(self, wb, status=None, changed=None):
        super().__init__(wb, status, changed)
        self.results = []
        self.done, self.total = 0, 1

    def run(self, engines, *, via: str = "direct", num_requests: int = 32, rate: str = "inf",
            max_concurrency: int = 8, max_tokens: int = 32) -> bool:
        try:
            if self.busy:
                raise ValueError("a benchmark is running")
            request_rate = parse_rate(rate)
            engines = list(engines)
            if not engines:
                raise ValueError("select at least one engine")
        except ValueError as e:
            self.error(str(e))
            return False
        self.done, self.total = 0, num_requests * len(engines)
        self.tasks.run(self._run, engines, via, num_requests, request_rate, max_concurrency,
                       max_tokens)
        return True

    def _run(self, engines, via, num_requests, rate, max_concurrency, max_tokens) -> None:
        self.ok(f"running {num_requests} requests on {', '.join(engines)} ({via})...")
        self.changed()
        done: dict[str, int] = {}

        def on_result(engine, d, total):
            done[engine] = d
            self.done = sum(done.values())
            self.changed()

        self.results = self.wb.bench(engines, via=via, num_requests=num_requests,
                                     request_rate=rate, max_concurrency=max_concurrency,
                                     max_tokens=max_tokens, on_result=on_result)
        self.ok("done (warm-up excluded: " + ", ".join(
            f"{r.target} {r.warmup_s:.1f} s" for r in self.results) + ")")

    def table_html(self) -> str:
        return html_table([r.row() for r in self.results], BENCH_COLUMNS) if self.results else ""

    def charts(self) -> list[str]:
        return bench_charts(self.results) if self.results else ["", ""]
