"""Metrics tab: a load to give the charts something to show (the charts read the workbench's
metrics history directly)."""

from __future__ import annotations

from widgets.state.base import TabState


class MetricsState(TabState):
    name = "metrics"

    def send_load(self, num_requests: int = 16) -> None:
        """`num_requests` requests to every engine, 4 at a time, 32 tokens each (a task)."""
        self.tasks.run(self._send_load, num_requests)

    def _send_load(self, num_requests: int) -> None:
        self.ok("sending a load...")
        self.wb.bench(num_requests=num_requests, max_concurrency=4, max_tokens=32,
                      warmup=False)
        self.ok("load done")
