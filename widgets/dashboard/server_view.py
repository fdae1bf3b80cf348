"""Server tab (Panel): start, stop and restart the OpenAI-compatible server over chosen engines,
its URL (and Colab's proxied URL), ready-to-copy `curl` and `openai` snippets, and the last
requests it answered."""

from __future__ import annotations

import html

import panel as pn

from widgets.dashboard.common import StatusLine, sync_engines
from widgets.formatting import code_block, curl_snippet, html_table, openai_snippet
from widgets.presenters import LOG_COLUMNS, request_log_rows
from widgets.tasks import Tasks


class ServerPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("server")
        self.tasks = Tasks(self.status.error, "dashboard-server")
        self.engines = pn.widgets.MultiChoice(name="serve", options=[], width=300)
        self.host = pn.widgets.TextInput(name="host", value="127.0.0.1", width=150)
        self.port = pn.widgets.IntInput(name="port (0: any free)", value=0, start=0, end=65535,
                                        width=150)
        self.api_key = pn.widgets.PasswordInput(name="API key", placeholder="optional",
                                                width=200)
        self.start_button = pn.widgets.Button(name="Start server", button_type="success",
                                              width=120)
        self.stop_button = pn.widgets.Button(name="Stop server", button_type="danger", width=120)
        self.restart_button = pn.widgets.Button(name="Restart", width=100)
        self.url = pn.pane.HTML("", css_classes=["wb-server-url"])
        self.snippets = pn.pane.HTML("", sizing_mode="stretch_width")
        self.log_table = pn.pane.HTML("", css_classes=["wb-request-log"])
        self.start_button.on_click(lambda _: self.tasks.run(self.start))
        self.restart_button.on_click(lambda _: self.tasks.run(self.start))
        self.stop_button.on_click(lambda _: self.tasks.run(self.stop))
        self._drawn_version = None
        self.refresh()

    def start(self) -> None:
        engines = list(self.engines.value)
        if not engines:
            raise ValueError("select at least one engine to serve")
        self.status.ok("starting...")
        self.wb.serve(engines, host=self.host.value.strip(), port=self.port.value,
                      api_key=self.api_key.value or None)
        self.status.ok("running")
        self.refresh()

    def stop(self) -> None:
        self.wb.stop_server()
        self.status.ok("stopped")
        self.refresh()

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)
        handle = self.wb.server
        if handle is None:
            self.url.object = "<i>not running</i>"
            self.snippets.object = ""
        else:
            public = handle.public_url
            colab = (f" · Colab: <a href='{html.escape(public)}' target='_blank'>"
                     f"{html.escape(public)}</a>" if public != handle.url else "")
            self.url.object = (f"Serving <b>{html.escape(', '.join(self.wb.served_engines))}"
                               f"</b> at <a href='{handle.url}/docs' target='_blank'>"
                               f"<code class='wb-url'>{handle.url}</code></a>{colab}")
            model = self.wb.served_engines[0]
            key = self.api_key.value or None
            self.snippets.object = (code_block(curl_snippet(handle.url, model, key))
                                    + code_block(openai_snippet(handle.url, model, key)))
        self.tick()

    def tick(self) -> None:
        log = self.wb.request_log
        version = (len(log), log[-1]["time"] if log else None)
        if version != self._drawn_version:  # redraw only when a request was logged
            self._drawn_version = version
            self.log_table.object = html_table(request_log_rows(log), LOG_COLUMNS)

    def __panel__(self):
        return pn.Column(pn.Row(self.engines, self.host, self.port, self.api_key),
                         pn.Row(self.start_button, self.stop_button, self.restart_button),
                         self.status.pane, self.url, self.snippets,
                         pn.pane.Markdown("**Last requests**"), self.log_table,
                         sizing_mode="stretch_width")
