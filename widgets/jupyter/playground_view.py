"""Playground tab (ipywidgets): chat or completion on one engine, streamed into the page, with the
sampling parameters a person sets and, per answer, TTFT, tok/s, tokens and finish reason. Stop
aborts the request. Logic: `widgets.state.playground` (redraws <= 20 a second)."""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.common import WIDE, EngineSelect, Status, sampling_widgets, values
from widgets.state.playground import PlaygroundState


class PlaygroundView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.state = PlaygroundState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
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
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.state.stop())
        self.clear_button.on_click(lambda _: self.state.clear())
        params = list(self.sampling.values())
        super().__init__([
            w.HBox([self.engine, self.mode]), self.system, self.prompt,
            w.HBox([self.send_button, self.stop_button, self.clear_button]), self.status,
            self.output, self.stats,
            w.Accordion([w.VBox([w.HBox(params[i:i + 3]) for i in range(0, len(params), 3)])],
                        titles=("Sampling parameters",))])

    # the parts a test (or a notebook) reads
    @property
    def text(self) -> str:
        return self.state.text

    @property
    def messages(self) -> list[dict]:
        return self.state.messages

    def send(self) -> None:
        if self.state.send(self.engine.value, self.mode.value, self.prompt.value,
                           values(self.sampling), system=self.system.value):
            self.prompt.value = ""
        self.redraw()

    def redraw(self) -> None:
        busy = self.state.busy
        self.send_button.disabled, self.stop_button.disabled = busy, not busy
        self.output.value = self.state.output_html()
        self.stats.value = self.state.stats_html

    def refresh(self) -> None:
        self.engines.refresh()
