"""Playground tab: chat or completion on one engine, streamed into the page, with the sampling
parameters a person sets and, per answer, TTFT, tok/s, tokens and finish reason. Stop aborts the
request. Text updates are throttled (<= 20 a second)."""

from __future__ import annotations

import html
import time
import uuid

import ipywidgets as w

from widgets.presenters import answer_stats_html, conversation_html
from widgets.jupyter.common import WIDE, EngineSelect, Status, read_sampling, sampling_widgets
from widgets.tasks import Tasks
from widgets.throttle import Throttle


class PlaygroundView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.tasks = Tasks(self.status.error, "playground")
        self.engine = w.Dropdown(description="engine")
        self.engines = EngineSelect(wb, self.engine)
        self.mode = w.ToggleButtons(options=["chat", "completion"], value="chat")
        self.system = w.Text(description="system", placeholder="optional system prompt",
                             layout=WIDE)
        self.prompt = w.Textarea(placeholder="Type a message (chat) or a prompt (completion)",
                                 layout=w.Layout(width="98%", height="70px"))
        self.sampling = sampling_widgets()
        self.send_button = w.Button(description="Send", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.clear_button = w.Button(description="Clear", icon="eraser")
        self.output = w.HTML()
        self.stats = w.HTML()
        self.messages: list[dict] = []
        self.text = ""  # the answer being streamed
        self.last_output = None  # the last RequestOutput of the last answer
        self._request_id: str | None = None
        self._streaming = False
        self._throttle = Throttle(self._draw, max_rate=20)
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        params = list(self.sampling.values())
        super().__init__([
            w.HBox([self.engine, self.mode]), self.system, self.prompt,
            w.HBox([self.send_button, self.stop_button, self.clear_button]), self.status,
            self.output, self.stats,
            w.Accordion([w.VBox([w.HBox(params[i:i + 3]) for i in range(0, len(params), 3)])],
                        titles=("Sampling parameters",))])

    def refresh(self) -> None:
        self.engines.refresh()

    def send(self) -> None:
        """Start streaming an answer (returns at once; `tasks.wait()` waits for the end)."""
        if self.tasks.busy:
            self.status.error("a request is running: stop it first")
            return
        try:
            params = read_sampling(self.sampling)
            engine = self.engine.value
            if not engine:
                raise ValueError("add an engine first (Engines tab)")
            text = self.prompt.value
            if not text.strip():
                raise ValueError("the prompt is empty")
        except ValueError as e:
            self.status.error(str(e))
            return
        if self.mode.value == "chat":
            system = ([{"role": "system", "content": self.system.value}]
                      if self.system.value.strip() and not self.messages else [])
            self.messages = self.messages + system + [{"role": "user", "content": text}]
            prompt, chat = list(self.messages), True
        else:
            self.messages = []
            prompt, chat = text, False
        self.prompt.value = ""
        self._request_id = f"playground-{uuid.uuid4().hex[:8]}"
        self.tasks.run(self._run, engine, prompt, chat, params, self._request_id)

    def _run(self, engine, prompt, chat, params, request_id) -> None:
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.text, self.last_output, self._streaming = "", None, True
        self.status.ok(f"generating on {engine}...")
        t0 = time.perf_counter()
        first = None
        try:
            for out in self.wb.stream(engine, prompt, params, chat=chat, request_id=request_id):
                if out.outputs[0].delta_token_ids and first is None:
                    first = time.perf_counter()
                self.text += out.outputs[0].delta_text
                self.last_output = out
                self._throttle()
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True
            self._streaming = False
        end = time.perf_counter()
        c = self.last_output.outputs[0]
        n = len(c.token_ids)
        if chat:
            self.messages.append({"role": "assistant", "content": self.text})
        rate = (n - 1) / (end - first) if first is not None and n > 1 and end > first else None
        self.stats.value = answer_stats_html(engine, None if first is None else first - t0,
                                             rate, n, c.finish_reason)
        self._throttle.flush()
        self.status.ok("done")

    def _draw(self) -> None:
        if self.mode.value == "chat":
            self.output.value = conversation_html(self.messages,
                                                  self.text if self._streaming else None)
        else:
            self.output.value = (f"<div style='white-space:pre-wrap;font-size:13px'>"
                                 f"{html.escape(self.text)}</div>")

    def stop(self) -> None:
        if self._request_id is not None:
            self.wb.abort(self.engine.value, self._request_id)
            self.status.ok("stopped")

    def clear(self) -> None:
        self.messages, self.text = [], ""
        self.output.value = self.stats.value = ""
