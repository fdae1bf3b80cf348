"""Compare tab (ipywidgets): the same prompts on several engines, their text streaming side by
side, then a summary (TTFT, tok/s, ITL) and a same-tokens badge per prompt.
Logic: `widgets.state.compare` (redraws <= 20 a second)."""

from __future__ import annotations

import ipywidgets as w

from widgets.forms import PRESET_PROMPTS
from widgets.jupyter.common import EngineSelect, Status, sampling_widgets, values
from widgets.state.compare import CompareState


class CompareView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.state = CompareState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
        self.prompts = w.Textarea(value="\n".join(PRESET_PROMPTS[:2]),
                                  placeholder="one prompt per line",
                                  layout=w.Layout(width="60%", height="90px"))
        self.presets = w.Button(description="Preset prompts", icon="list")
        self.engines = w.SelectMultiple(description="engines", rows=4)
        self.engine_select = EngineSelect(wb, self.engines, select_all=True)
        self.chat = w.Checkbox(value=True, description="chat template", indent=False)
        self.concurrent = w.Checkbox(value=False, description="engines at the same time",
                                     indent=False)
        self.sampling = sampling_widgets(("max_tokens", "temperature", "seed", "ignore_eos"),
                                         max_tokens=32)
        self.run_button = w.Button(description="Run comparison", button_style="primary",
                                   icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.summary = w.HTML()
        self.grid = w.HTML()
        self.presets.on_click(lambda _: setattr(self.prompts, "value", "\n".join(PRESET_PROMPTS)))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.state.stop())
        super().__init__([
            w.HBox([self.prompts, w.VBox([self.presets, self.chat, self.concurrent])]),
            w.HBox([self.engines, w.VBox(list(self.sampling.values()))]),
            w.HBox([self.run_button, self.stop_button]), self.status, self.summary, self.grid])

    @property
    def comparison(self):
        return self.state.comparison

    def text(self, engine: str, index: int) -> str:
        """The text shown for `engine` on prompt `index` so far."""
        return self.state.text(engine, index)

    def run(self) -> None:
        self.state.run(self.prompts.value, values(self.sampling), self.engines.value,
                       chat=self.chat.value, concurrent=self.concurrent.value)
        self.redraw()

    def redraw(self) -> None:
        busy = self.state.busy
        self.run_button.disabled, self.stop_button.disabled = busy, not busy
        self.grid.value = self.state.grid_html()
        self.summary.value = self.state.summary_html()

    def refresh(self) -> None:
        self.engine_select.refresh()
