"""Server tab: start, stop and restart the API server over chosen engines; its URL, client
snippets and request log as HTML."""

from __future__ import annotations

import html

from widgets.formatting import code_block, curl_snippet, html_table, openai_snippet
from widgets.presenters import LOG_COLUMNS, request_log_rows
from widgets.state.base import TabState


class ServerState(TabState):
    name = "server"

    def __init__(self, wb, status=None, changed=None):
        super().__init__(wb, status, changed)
        self.api_key: str | None = None
        self._log_version = None

    def start(self, engines, host: str = "127.0.0.1", port: int = 0,
              api_key: str | None = None) -> None:
        """(Re)start the server in a background task (it returns once the server answers)."""
        self.tasks.run(self._start, list(engines), host.strip(), int(port), api_key or None)

    def _start(self, engines, host, port, api_key) -> None:
        if not engines:
            raise ValueError("select at least one engine to serve")
        self.ok("starting...")
        self.wb.serve(engines, host=host, port=port, api_key=api_key)
        self.api_key = api_key
        self.ok("running")

    def stop(self) -> None:
        self.tasks.run(self._stop)

    def _stop(self) -> None:
        self.wb.stop_server()
        self.ok("stopped")

    def url_html(self) -> str:
        handle = self.wb.server
        if handle is None:
            return "<i>not running</i>"
        public = handle.public_url
        colab = (f" · Colab: <a href='{html.escape(public)}' target='_blank'>"
                 f"{html.escape(public)}</a>" if public != handle.url else "")
        return (f"Serving <b>{html.escape(', '.join(self.wb.served_engines))}</b> at "
                f"<a href='{handle.url}/docs' target='_blank'><code class='wb-url'>{handle.url}"
                f"</code></a>{colab}")

    def snippets_html(self) -> str:
        handle = self.wb.server
        if handle is None or not self.wb.served_engines:
            return ""
        model = self.wb.served_engines[0]
        return (code_block(curl_snippet(handle.url, model, self.api_key))
                + code_block(openai_snippet(handle.url, model, self.api_key)))

    def log_html(self) -> str:
        return html_table(request_log_rows(self.wb.request_log), LOG_COLUMNS)

    def log_changed(self) -> bool:
        """True once per new request in the log (views redraw the log only then)."""
        log = self.wb.request_log
        version = (len(log), log[-1]["time"] if log else None)
        if version == self._log_version:
            return False
        self._log_version = version
        return True
