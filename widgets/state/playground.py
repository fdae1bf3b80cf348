"""Playground tab: one conversation (chat) or completion on one engine, streamed, with per-answer
stats; `stop()` aborts the request. Redraws are throttled (`max_rate` a second)."""

from __future__ import annotations

import html
import time
import uuid

from widgets.forms import sampling_params
from widgets.presenters import answer_stats_html, conversation_html
from widgets.state.base import TabState
from widgets.throttle import Throttle


class PlaygroundState(TabState):
    name = "playground"

    def __init__(self, wb, status=None, changed=None, max_rate: float = 20.0):
        super().__init__(wb, status, changed)
        self.messages: list[dict] = []  # the conversation (chat mode)
        self.mode = "chat"
        self.text = ""  # the answer being streamed
        self.streaming = False
        self.stats_html = ""
        self.last_output = None  # the last RequestOutput of the last answer
        self.engine: str | None = None
        self.request_id: str | None = None
        self.throttle = Throttle(self.changed, max_rate=max_rate)

    def send(self, engine: str | None, mode: str, prompt: str, sampling: dict,
             system: str = "") -> bool:
        """Validate and start streaming an answer; False (and an error shown) if refused."""
        try:
            if self.busy:
                raise ValueError("a request is running: stop it first")
            params = sampling_params(sampling)
            if not engine:
                raise ValueError("add an engine first (Engines tab)")
            if not prompt.strip():
                raise ValueError("the prompt is empty")
            if mode not in ("chat", "completion"):
                raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
        except ValueError as e:
            self.error(str(e))
            return False
        self.mode, self.engine = mode, engine
        if mode == "chat":
            if system.strip() and not self.messages:
                self.messages.append({"role": "system", "content": system})
            self.messages.append({"role": "user", "content": prompt})
            request = list(self.messages)
        else:
            self.messages, request = [], prompt
        self.request_id = f"playground-{uuid.uuid4().hex[:8]}"
        self.text, self.stats_html, self.streaming = "", "", True
        self.tasks.run(self._run, engine, request, mode == "chat", params, self.request_id)
        return True

    def _run(self, engine, request, chat, params, request_id) -> None:
        self.ok(f"generating on {engine}...")
        self.changed()
        t0, first, last = time.perf_counter(), None, None
        try:
            for out in self.wb.stream(engine, request, params, chat=chat, request_id=request_id):
                if out.outputs[0].delta_token_ids and first is None:
                    first = time.perf_counter()
                self.text += out.outputs[0].delta_text
                last = out
                self.throttle()
        finally:
            self.streaming = False
        end, c = time.perf_counter(), last.outputs[0]
        n = len(c.token_ids)
        self.last_output = last
        if chat:
            self.messages.append({"role": "assistant", "content": self.text})
        rate = (n - 1) / (end - first) if first is not None and n > 1 and end > first else None
        self.stats_html = answer_stats_html(engine, None if first is None else first - t0, rate,
                                            n, c.finish_reason)
        self.throttle.flush()
        self.ok("done")

    def stop(self) -> None:
        if self.request_id is not None and self.engine is not None:
            self.wb.abort(self.engine, self.request_id)
            self.ok("stopped")

    def clear(self) -> None:
        self.messages, self.text, self.stats_html = [], "", ""
        self.changed()

    def output_html(self) -> str:
        if self.mode == "chat":
            return conversation_html(self.messages, self.text if self.streaming else None)
        return (f"<div class='wb-message' style='white-space:pre-wrap;font-size:13px'>"
                f"{html.escape(self.text)}</div>")
