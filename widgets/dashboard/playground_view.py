"""Playground tab (Panel): chat or completion on one engine, streamed into the page, the sampling
parameters a person sets, per-answer TTFT, tok/s, tokens and finish reason; Stop aborts the
request. Logic: `widgets.state.playground` (redraws <= 20 a second)."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import (
    OnSession,
    StatusLine,
    sampling_widgets,
    sync_engines,
    values,
)
from widgets.state.playground import PlaygroundState


class PlaygroundPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("playground")
        self.state = PlaygroundState(wb, self.status.show, OnSession(self.redraw))
        self.engine = pn.widgets.Select(label="engine", options=[], width=180)
        self.mode = pn.widgets.RadioButtonGroup(options=["chat", "completion"], value="chat",
                                                align="end")
        self.system = pn.widgets.TextInput(label="system prompt", placeholder="optional",
                                           sizing_mode="stretch_width")
        self.prompt = pn.widgets.TextAreaInput(label="message", sizing_mode="stretch_width",
                                               height=80, css_classes=["wb-prompt"],
                                               placeholder="Type a message or a prompt")
        self.sampling = sampling_widgets()
        self.send_button = pn.widgets.Button(label="Send", color="primary", width=90)
        self.stop_button = pn.widgets.Button(label="Stop", disabled=True, width=90)
        self.clear_button = pn.widgets.Button(label="Clear", width=90)
        self.output = pn.pane.HTML("", css_classes=["wb-playground-output"],
                                   sizing_mode="stretch_width")
        self.stats = pn.pane.HTML("", css_classes=["wb-playground-stats"])
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.state.stop())
        self.clear_button.on_click(lambda _: self.state.clear())
        self.refresh()

    def send(self) -> None:
        if self.state.send(self.engine.value, self.mode.value, self.prompt.value,
                           values(self.sampling), system=self.system.value):
            self.prompt.value = ""
        self.redraw()

    def redraw(self) -> None:
        busy = self.state.busy
        self.send_button.disabled, self.stop_button.disabled = busy, not busy
        self.output.object = self.state.output_html()
        self.stats.object = self.state.stats_html

    def refresh(self) -> None:
        sync_engines(self.wb, self.engine)

    def __panel__(self):
        return pn.Row(
            pn.Column(pn.Row(self.engine, self.mode), self.system, self.prompt,
                      pn.Row(self.send_button, self.stop_button, self.clear_button),
                      self.status.pane, self.output, self.stats, sizing_mode="stretch_width"),
            pn.Column(pn.pane.Markdown("**Sampling**"), *self.sampling.values(), width=230),
            css_classes=["wb-playground"])
