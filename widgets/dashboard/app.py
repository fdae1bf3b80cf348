"""`Dashboard`: one browser session's workbench page (a Panel `BootstrapTemplate`, which loads no
resource from outside the machine) with the tabs Model, Engines, Playground, Compare, Metrics,
Server, Bench over a `Workbench` that every session of the process shares.

Per session: its own views (so two browser tabs never mix their runs) and one periodic callback
on the session's event loop (`tick`, every 500 ms) that refreshes the views when the workbench
changed (`Workbench.version`) and feeds the visible tab: new metrics points into the Bokeh
charts, the server's request log, (every 2 s) the engines table. Errors raised by an action are
shown in the tab's status line; the page never dies.
"""

from __future__ import annotations

import logging
import weakref

import panel as pn

from widgets.dashboard.bench_view import BenchPanel
from widgets.dashboard.compare_view import ComparePanel
from widgets.dashboard.engines_view import EnginesPanel
from widgets.dashboard.metrics_view import MetricsPanel
from widgets.dashboard.model_view import ModelPanel
from widgets.dashboard.playground_view import PlaygroundPanel
from widgets.dashboard.server_view import ServerPanel

TABS = ("Model", "Engines", "Playground", "Compare", "Metrics", "Server", "Bench")
TICK_MS = 500
logger = logging.getLogger("widgets")

SESSIONS: weakref.WeakSet[Dashboard] = weakref.WeakSet()  # live sessions (tests read it)


class Dashboard:
    def __init__(self, wb, *, title: str = "workbench"):
        self.wb = wb
        self.model = ModelPanel(wb)
        self.engines = EnginesPanel(wb)
        self.playground = PlaygroundPanel(wb)
        self.compare = ComparePanel(wb)
        self.metrics = MetricsPanel(wb)
        self.server = ServerPanel(wb)
        self.bench = BenchPanel(wb)
        self.views = (self.model, self.engines, self.playground, self.compare, self.metrics,
                      self.server, self.bench)
        # Not dynamic: every component is in the first page, so its resources are inlined (a tab
        # rendered later would fetch its JavaScript from a CDN). tick() feeds the visible tab only.
        self.tabs = pn.Tabs(*zip(TABS, self.views), dynamic=False)
        self.template = pn.template.BootstrapTemplate(
            title=title, main=[self.tabs], header_background="#24292f")
        self._version = wb.version
        self._callback = None
        self._ticks = 0
        SESSIONS.add(self)

    def tick(self) -> None:
        if self.wb.version != self._version:
            self._version = self.wb.version
            for view in self.views:
                self._guarded(view, view.refresh)
        visible = TABS[self.tabs.active]
        if visible == "Metrics":  # charts hidden in another tab would still redraw in the page
            self._guarded(self.metrics, self.metrics.tick)  # catches up on every sample taken
        elif visible == "Server":
            self._guarded(self.server, self.server.tick)
        elif visible == "Engines":
            self._ticks += 1
            if self._ticks % 4 == 0:  # every 2 s: request counts in the engines table
                self._guarded(self.engines, self.engines.tick)

    @staticmethod
    def _guarded(view, fn) -> None:
        """A view that fails to redraw shows the error in its status line and logs it; the other
        views still redraw and the next tick tries again."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - never a dead page
            logger.exception("%s failed to redraw", type(view).__name__)
            view.status.show(f"{type(e).__name__}: {e}", True)

    def page(self):
        """The page for the current session, with its periodic callback registered."""
        if self._callback is None and pn.state.curdoc is not None:
            self._callback = pn.state.add_periodic_callback(self.tick, period=TICK_MS)
        return self.template
