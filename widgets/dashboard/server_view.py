"""Server tab (Panel): start, stop and restart the OpenAI-compatible server over chosen engines,
its URL (and Colab's proxied URL), ready-to-copy `curl` and `openai` snippets, and the last
requests it answered. Logic: `widgets.state.server`."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import OnSession, StatusLine, sync_engines
from widgets.state.server import ServerState


class ServerPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("server")
        self.state = ServerState(wb, self.status.show, OnSession(self.redraw))
        self.engines = pn.widgets.MultiChoice(label="serve", options=[], width=300)
        self.host = pn.widgets.TextInput(label="host", value="127.0.0.1", width=150)
        self.port = pn.widgets.IntInput(label="port (0: any free)", value=0, start=0, end=65535,
                                        width=150)
        self.api_key = pn.widgets.PasswordInput(label="API key", placeholder="optional",
                                                width=200)
        self.start_button = pn.widgets.Button(label="Start server", color="success",
                                              width=120)
        self.stop_button = pn.widgets.Button(label="Stop server", color="danger", width=120)
        self.restart_button = pn.widgets.Button(label="Restart", width=100)
        self.url = pn.pane.HTML("", css_classes=["wb-server-url"])
        self.snippets = pn.pane.HTML("", sizing_mode="stretch_width")
        self.log_table = pn.pane.HTML("", css_classes=["wb-request-log"])
        for button in (self.start_button, self.restart_button):
            button.on_click(lambda _: self.state.start(self.engines.value, self.host.value,
                                                       self.port.value, self.api_key.value))
        self.stop_button.on_click(lambda _: self.state.stop())
        self.refresh()

    def redraw(self) -> None:
        busy = self.state.busy
        for b in (self.start_button, self.stop_button, self.restart_button):
            b.disabled = busy
        self.url.object = self.state.url_html()
        self.snippets.object = self.state.snippets_html()
        self.log_table.object = self.state.log_html()

    def tick(self) -> None:
        if self.state.log_changed():  # redraw the log only when a request was logged
            self.log_table.object = self.state.log_html()

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)
        self.redraw()

    def __panel__(self):
        return pn.Column(pn.Row(self.engines, self.host, self.port, self.api_key),
                         pn.Row(self.start_button, self.stop_button, self.restart_button),
                         self.status.pane, self.url, self.snippets,
                         pn.pane.Markdown("**Last requests**"), self.log_table,
                         sizing_mode="stretch_width")
