"""Server tab (ipywidgets): start, stop and restart the OpenAI-compatible server over chosen
engines; its URL (and Colab's proxied URL), ready-to-copy `curl` and `openai` snippets, and the
last requests it answered (checked every second while the app lives). Logic:
`widgets.state.server`."""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.common import EngineSelect, Status
from widgets.state.server import ServerState
from widgets.tasks import Ticker


class ServerView(w.VBox):
    def __init__(self, wb, live: bool = True):
        self.wb = wb
        self.status = Status()
        self.state = ServerState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
        self.engines = w.SelectMultiple(description="serve", rows=4)
        self.engine_select = EngineSelect(wb, self.engines, select_all=True)
        self.host = w.Text(value="127.0.0.1", description="host")
        self.port = w.BoundedIntText(value=0, min=0, max=65535, description="port",
                                     tooltip="0 picks a free port")
        self.api_key = w.Password(description="API key", placeholder="optional")
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop")
        self.restart_button = w.Button(description="Restart", icon="refresh")
        self.url = w.HTML()
        self.snippets = w.HTML()
        self.log_table = w.HTML()
        for button in (self.start_button, self.restart_button):
            button.on_click(lambda _: self.state.start(self.engines.value, self.host.value,
                                                       self.port.value, self.api_key.value))
        self.stop_button.on_click(lambda _: self.state.stop())
        self.redraw()
        super().__init__([
            w.HBox([self.engines, w.VBox([self.host, self.port, self.api_key])]),
            w.HBox([self.start_button, self.stop_button, self.restart_button]), self.status,
            self.url, self.snippets, w.HTML("<b>Last requests</b>"), self.log_table])
        self._ticker = Ticker(self._draw_log, 1.0, "server-view") if live else None

    def redraw(self) -> None:
        busy = self.state.busy
        for b in (self.start_button, self.stop_button, self.restart_button):
            b.disabled = busy
        self.url.value = self.state.url_html()
        self.snippets.value = self.state.snippets_html()
        self.log_table.value = self.state.log_html()

    def _draw_log(self) -> None:
        if self.state.log_changed():
            self.log_table.value = self.state.log_html()

    def refresh(self) -> None:
        self.engine_select.refresh()
        self.redraw()

    def close_view(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
