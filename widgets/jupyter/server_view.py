"""Server tab: start, stop and restart the OpenAI-compatible server over chosen engines; its URL
(and Colab's proxied URL), ready-to-copy `curl` and `openai` snippets, and the last requests it
answered (refreshed every second while it runs)."""

from __future__ import annotations

import html

import ipywidgets as w

from widgets.formatting import code_block, curl_snippet, html_table, openai_snippet
from widgets.presenters import LOG_COLUMNS, request_log_rows
from widgets.jupyter.common import EngineSelect, Status
from widgets.tasks import Tasks, Ticker

class ServerView(w.VBox):
    def __init__(self, wb, live: bool = True):
        self.wb = wb
        self.status = Status()
        self.tasks = Tasks(self.status.error, "server")
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
        self.start_button.on_click(lambda _: self.tasks.run(self.start))
        self.stop_button.on_click(lambda _: self.tasks.run(self.stop))
        self.restart_button.on_click(lambda _: self.tasks.run(self.start))
        self.refresh()
        super().__init__([
            w.HBox([self.engines, w.VBox([self.host, self.port, self.api_key])]),
            w.HBox([self.start_button, self.stop_button, self.restart_button]), self.status,
            self.url, self.snippets, w.HTML("<b>Last requests</b>"), self.log_table])
        self._ticker = Ticker(self._draw_log, 1.0, "server-view") if live else None

    def start(self) -> None:
        """(Re)start the server with the form's settings (blocks until it accepts requests)."""
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
        self.engine_select.refresh()
        handle = self.wb.server
        if handle is None:
            self.url.value = "<i>not running</i>"
            self.snippets.value = ""
        else:
            public = handle.public_url
            colab = (f" · Colab: <a href='{html.escape(public)}' target='_blank'>"
                     f"{html.escape(public)}</a>" if public != handle.url else "")
            self.url.value = (f"Serving <b>{html.escape(', '.join(self.wb.served_engines))}</b> "
                              f"at <a href='{handle.url}/docs' target='_blank'>"
                              f"<code class='wb-url'>{handle.url}</code></a>{colab}")
            model = self.wb.served_engines[0]
            key = self.api_key.value or None
            self.snippets.value = (code_block(curl_snippet(handle.url, model, key))
                                   + code_block(openai_snippet(handle.url, model, key)))
        self._draw_log()

    def _draw_log(self) -> None:
        self.log_table.value = html_table(request_log_rows(self.wb.request_log), LOG_COLUMNS)

    def close_view(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
