"""Playground tab (Panel): chat or completion on one engine, streamed into the page (throttled to
20 updates a second), the sampling parameters a person sets, per-answer TTFT, tok/s, tokens and
finish reason; Stop aborts the request."""

from __future__ import annotations

import html
import time
import uuid

import panel as pn

from widgets.dashboard.common import StatusLine, read_sampling, sampling_widgets, sync_engines
from widgets.presenters import answer_stats_html, conversation_html
from widgets.tasks import Tasks
from widgets.throttle import Throttle


class PlaygroundPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("playground")
        self.tasks = Tasks(self.status.error, "dashboard-playground")
        self.engine = pn.widgets.Select(name="engine", options=[], width=180)
        self.mode = pn.widgets.RadioButtonGroup(options=["chat", "completion"], value="chat",
                                                align="end")
        self.system = pn.widgets.TextInput(name="system prompt", placeholder="optional",
                                           sizing_mode="stretch_width")
        self.prompt = pn.widgets.TextAreaInput(name="message", sizing_mode="stretch_width",
                                               height=80, css_classes=["wb-prompt"],
                                               placeholder="Type a message or a prompt")
        self.sampling = sampling_widgets()
        self.send_button = pn.widgets.Button(name="Send", button_type="primary", width=90)
        self.stop_button = pn.widgets.Button(name="Stop", disabled=True, width=90)
        self.clear_button = pn.widgets.Button(name="Clear", width=90)
        self.output = pn.pane.HTML("", css_classes=["wb-playground-output"],
                                   sizing_mode="stretch_width")
        self.stats = pn.pane.HTML("", css_classes=["wb-playground-stats"])
        self.messages: list[dict] = []
        self.text = ""
        self._streaming = False
        self._request_id: str | None = None
        self._throttle = Throttle(self._draw, max_rate=20)
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.refresh()

    def refresh(self) -> None:
        sync_engines(self.wb, self.engine)

    def send(self) -> None:
        if self.tasks.busy:
            self.status.error("a request is running: stop it first")
            return
        try:
            params = read_sampling(self.sampling)
            if not self.engine.value:
                raise ValueError("add an engine first (Engines tab)")
            if not self.prompt.value.strip():
                raise ValueError("the prompt is empty")
        except ValueError as e:
            self.status.error(str(e))
            return
        chat = self.mode.value == "chat"
        if chat:
            system = ([{"role": "system", "content": self.system.value}]
                      if self.system.value.strip() and not self.messages else [])
            self.messages = self.messages + system + [{"role": "user",
                                                       "content": self.prompt.value}]
            prompt = list(self.messages)
        else:
            self.messages, prompt = [], self.prompt.value
        self.prompt.value = ""
        self._request_id = f"dashboard-{uuid.uuid4().hex[:8]}"
        self.tasks.run(self._run, self.engine.value, prompt, chat, params, self._request_id)

    def _run(self, engine, prompt, chat, params, request_id) -> None:
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.text, self._streaming, last = "", True, None
        self.status.ok(f"generating on {engine}...")
        t0, first = time.perf_counter(), None
        try:
            for out in self.wb.stream(engine, prompt, params, chat=chat, request_id=request_id):
                if out.outputs[0].delta_token_ids and first is None:
                    first = time.perf_counter()
                self.text += out.outputs[0].delta_text
                last = out
                self._throttle()
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True
            self._streaming = False
        end, c = time.perf_counter(), last.outputs[0]
        n = len(c.token_ids)
        if chat:
            self.messages.append({"role": "assistant", "content": self.text})
        rate = (n - 1) / (end - first) if first is not None and n > 1 and end > first else None
        self.stats.object = answer_stats_html(engine, None if first is None else first - t0,
                                              rate, n, c.finish_reason)
        self._throttle.flush()
        self.status.ok("done")

    def _draw(self) -> None:
        if self.mode.value == "chat":
            self.output.object = conversation_html(self.messages,
                                                   self.text if self._streaming else None)
        else:
            self.output.object = (f"<div class='wb-message' style='white-space:pre-wrap'>"
                                  f"{html.escape(self.text)}</div>")

    def stop(self) -> None:
        if self._request_id is not None:
            self.wb.abort(self.engine.value, self._request_id)
            self.status.ok("stopped")

    def clear(self) -> None:
        self.messages, self.text = [], ""
        self.output.object = self.stats.object = ""

    def __panel__(self):
        return pn.Row(
            pn.Column(pn.Row(self.engine, self.mode), self.system, self.prompt,
                      pn.Row(self.send_button, self.stop_button, self.clear_button),
                      self.status.pane, self.output, self.stats, sizing_mode="stretch_width"),
            pn.Column(pn.pane.Markdown("**Sampling**"), *self.sampling.values(), width=230),
            css_classes=["wb-playground"])
