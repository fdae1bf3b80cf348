"""Metrics tab: a load to give the charts something to show (the charts read the workbench's
metrics history directly), and for engines that keep them, the KV page map (eSurge's
`kv_snapshot()`) and one request's timeline (`timeline()`, vSurge and eSurge)."""

from __future__ import annotations

import time

from widgets.formatting import html_table
from widgets.kv_map import page_legend_html, page_map_svg, timeline_rows, timeline_svg
from widgets.state.base import TabState

MAX_REQUEST_CHOICES = 50


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

    # ---- page map and timelines -----------------------------------------------------------
    def paged_engines(self) -> list[str]:
        """Engines with a page map (eSurge)."""
        return [n for n, e in self.wb.engines.items() if hasattr(e, "kv_snapshot")]

    def timeline_engines(self) -> list[str]:
        """Engines that record request timelines (vSurge, eSurge)."""
        return [n for n, e in self.wb.engines.items() if hasattr(e, "timeline_requests")]

    def request_choices(self, engine: str | None) -> list[str]:
        """The engine's most recent requests with a timeline, newest first."""
        e = self.wb.engines.get(engine) if engine else None
        if e is None or not hasattr(e, "timeline_requests"):
            return []
        return e.timeline_requests()[::-1][:MAX_REQUEST_CHOICES]

    def page_map_html(self, engine: str | None, highlight: str | None = None) -> str:
        e = self.wb.engines.get(engine) if engine else None
        if e is None or not hasattr(e, "kv_snapshot"):
            return "<i>no paged engine (add an eSurge engine to see its KV pages)</i>"
        if e.closed:
            return "<i>engine closed</i>"
        return (page_map_svg(e.kv_snapshot(), highlight=highlight)
                + f"<div style='font-size:11px'>{page_legend_html()}</div>")

    def timeline_html(self, engine: str | None, request_id: str | None) -> str:
        e = self.wb.engines.get(engine) if engine else None
        if e is None or not request_id:
            return "<i>choose a request</i>"
        try:
            events = e.timeline(request_id)
        except KeyError as err:
            return f"<i>{err.args[0]}</i>"
        return (timeline_svg(events, now=time.monotonic())
                + html_table(timeline_rows(events), ("+ms", "event", "details")))
