"""`WorkbenchApp`: the workbench in a notebook (Jupyter, JupyterLab, VS Code, Colab).

    from widgets import WorkbenchApp
    app = WorkbenchApp()          # or WorkbenchApp(workbench) to share one with other code
    app                           # tabs: Model, Engines, Playground, Compare, Metrics, Server, Bench

Each tab is one view over the `workbench.Workbench` facade (`widgets/jupyter/*_view.py`); the
views hold no engine logic. Long work runs in background threads (the kernel is never blocked);
text updates are throttled to 20 per second; charts are SVG (they render in Colab). When the
workbench changes (a model loaded, an engine added or removed, the server started or stopped)
every tab refreshes its engine lists. `close()` stops the views' timers; the workbench stays
(close it too if the app made it: `app.close(workbench=True)`).
"""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.bench_view import BenchView
from widgets.jupyter.compare_view import CompareView
from widgets.jupyter.engines_view import EnginesView
from widgets.jupyter.metrics_view import MetricsView
from widgets.jupyter.model_view import ModelView
from widgets.jupyter.playground_view import PlaygroundView
from widgets.jupyter.server_view import ServerView
from workbench.facade import Workbench

TABS = ("Model", "Engines", "Playground", "Compare", "Metrics", "Server", "Bench")


class WorkbenchApp(w.Tab):
    def __init__(self, workbench: Workbench | None = None, *, live: bool = True):
        self.workbench = workbench if workbench is not None else Workbench()
        wb = self.workbench
        self.model = ModelView(wb)
        self.engines = EnginesView(wb)
        self.playground = PlaygroundView(wb)
        self.compare = CompareView(wb)
        self.metrics = MetricsView(wb, live=live)
        self.server = ServerView(wb, live=live)
        self.bench = BenchView(wb)
        self.views = (self.model, self.engines, self.playground, self.compare, self.metrics,
                      self.server, self.bench)
        super().__init__(children=list(self.views), titles=TABS)
        wb.subscribe(self.refresh)

    def refresh(self) -> None:
        for view in self.views:
            view.refresh()

    def close(self, workbench: bool = False) -> None:
        if not hasattr(self, "views") or getattr(self, "_views_closed", False):
            return super().close()  # Widget.__del__ after a failed __init__, or a second close
        self._views_closed = True
        self.workbench.unsubscribe(self.refresh)
        for view in self.views:
            stop = getattr(view, "close_view", None)
            if stop is not None:
                stop()
        if workbench:
            self.workbench.close()
        super().close()
