"""Compare tab (Panel): the same prompts on several engines, text streaming side by side, then a
summary (TTFT, tok/s, ITL) and a same-tokens badge per prompt. Several browser tabs can compare at
once: each session has its own view and state; the engines are shared.
Logic: `widgets.state.compare`.

The grid is one pane per (engine, prompt) cell, so a redraw sends only the cells whose text
changed, at most `REDRAWS_PER_S` times a second: each redraw costs the server a document patch and
the browser a re-layout (benchmarks/README.md measures what watching costs the engine)."""

from __future__ import annotations

import html

import panel as pn

from widgets.dashboard.common import (
    OnSession,
    StatusLine,
    sampling_widgets,
    sync_engines,
    values,
)
from widgets.forms import PRESET_PROMPTS
from widgets.state.compare import CompareState

REDRAWS_PER_S = 10.0


class ComparePanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("compare")
        self.state = CompareState(wb, self.status.show, OnSession(self.redraw),
                                  max_rate=REDRAWS_PER_S)
        self.prompts = pn.widgets.TextAreaInput(label="prompts (one per line)", height=100,
                                                value="\n".join(PRESET_PROMPTS[:2]),
                                                sizing_mode="stretch_width",
                                                css_classes=["wb-prompts"])
        self.presets = pn.widgets.Button(label="Preset prompts", width=130)
        self.engines = pn.widgets.MultiChoice(label="engines", options=[], width=300)
        self.chat = pn.widgets.Checkbox(label="chat template", value=True)
        self.concurrent = pn.widgets.Checkbox(label="engines at the same time", value=False)
        self.sampling = sampling_widgets(("max_tokens", "temperature", "seed", "ignore_eos"),
                                         max_tokens=32)
        self.run_button = pn.widgets.Button(label="Run comparison", color="primary",
                                            width=140)
        self.stop_button = pn.widgets.Button(label="Stop", disabled=True, width=90)
        self.summary = pn.pane.HTML("", css_classes=["wb-compare-summary"])
        self.grid = pn.Column(css_classes=["wb-compare-grid"], sizing_mode="stretch_width")
        self._cells: dict[tuple[str, int], pn.pane.HTML] = {}
        self._badges: list[pn.pane.HTML] = []
        self._grid_for: tuple = ()
        self.presets.on_click(lambda _: setattr(self.prompts, "value",
                                                "\n".join(PRESET_PROMPTS)))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.state.stop())
        self.refresh()

    @property
    def comparison(self):
        return self.state.comparison

    def run(self) -> None:
        self.state.run(self.prompts.value, values(self.sampling), self.engines.value,
                       chat=self.chat.value, concurrent=self.concurrent.value)
        self.redraw()

    def _build_grid(self, prompts, engines) -> None:
        line = {"border-bottom": "1px solid #ddd"}
        head = pn.Row(pn.pane.HTML("<b>prompt</b>", width=180),
                      *[pn.pane.HTML(f"<b>{html.escape(e)}</b>", sizing_mode="stretch_width")
                        for e in engines], pn.pane.HTML("<b>tokens</b>", width=190),
                      sizing_mode="stretch_width", styles=line)
        self._cells = {(e, i): pn.pane.HTML("", sizing_mode="stretch_width")
                       for i in range(len(prompts)) for e in engines}
        self._badges = [pn.pane.HTML("", width=190) for _ in prompts]
        rows = [pn.Row(pn.pane.HTML(f"<span style='color:#57606a'>{html.escape(p)}</span>",
                                    width=180),
                       *[self._cells[(e, i)] for e in engines], self._badges[i],
                       sizing_mode="stretch_width", styles=line)
                for i, p in enumerate(prompts)]
        self.grid.objects = [head, *rows]
        self._grid_for = (tuple(prompts), tuple(engines))

    def redraw(self) -> None:
        s = self.state
        busy = s.busy
        self.run_button.disabled, self.stop_button.disabled = busy, not busy
        if (tuple(s.prompts), tuple(s.engines)) != self._grid_for:
            self._build_grid(s.prompts, s.engines)
        for (engine, i), pane in list(self._cells.items()):
            text = s.cell_html(engine, i)
            if text != pane.object:  # only cells that changed are sent to the browser
                pane.object = text
        for i, pane in enumerate(self._badges):
            badge = s.badge_html(i)
            if badge != pane.object:
                pane.object = badge
        summary = s.summary_html()
        if summary != self.summary.object:
            self.summary.object = summary

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)

    def __panel__(self):
        return pn.Column(
            pn.Row(self.prompts, pn.Column(self.presets, self.chat, self.concurrent)),
            pn.Row(self.engines, *self.sampling.values()),
            pn.Row(self.run_button, self.stop_button), self.status.pane, self.summary,
            self.grid, sizing_mode="stretch_width", css_classes=["wb-compare"])
