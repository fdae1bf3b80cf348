"""Compare tab: the same prompts on several engines, their text streaming side by side, then a
summary (TTFT, tok/s, ITL) and a same-tokens badge per prompt."""

from __future__ import annotations

import threading

import ipywidgets as w

from widgets.forms import PRESET_PROMPTS, parse_prompts
from widgets.formatting import agreement_badge, html_table
from widgets.grid import compare_grid_html
from widgets.presenters import COMPARE_COLUMNS
from widgets.jupyter.common import EngineSelect, Status, read_sampling, sampling_widgets
from widgets.tasks import Tasks
from widgets.throttle import Throttle

class CompareView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.tasks = Tasks(self.status.error, "compare")
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
        self.run_button = w.Button(description="Run comparison", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.summary = w.HTML()
        self.grid = w.HTML()
        self.comparison = None  # the last finished Comparison
        self.live: dict[str, dict] = {}  # engine -> prompt index -> RequestRun (while running)
        self._prompts: list[str] = []
        self._engines: list[str] = []
        self._cancel = threading.Event()
        self._throttle = Throttle(self._draw, max_rate=20)
        self.draws = 0
        self.presets.on_click(lambda _: setattr(self.prompts, "value", "\n".join(PRESET_PROMPTS)))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self._cancel.set())
        super().__init__([
            w.HBox([self.prompts, w.VBox([self.presets, self.chat, self.concurrent])]),
            w.HBox([self.engines, w.VBox(list(self.sampling.values()))]),
            w.HBox([self.run_button, self.stop_button]), self.status, self.summary, self.grid])

    def refresh(self) -> None:
        self.engine_select.refresh()

    def run(self) -> None:
        """Start a comparison (returns at once; `tasks.wait()` waits for the end)."""
        if self.tasks.busy:
            self.status.error("a comparison is running: stop it first")
            return
        try:
            prompts = parse_prompts(self.prompts.value)
            params = read_sampling(self.sampling)
            engines = list(self.engines.value)
            if not engines:
                raise ValueError("select at least one engine (add engines in the Engines tab)")
        except ValueError as e:
            self.status.error(str(e))
            return
        self._cancel = threading.Event()
        self.tasks.run(self._run, prompts, params, engines)

    def _run(self, prompts, params, engines) -> None:
        self._prompts, self._engines, self.live = prompts, engines, {e: {} for e in engines}
        self.comparison = None
        self.summary.value = ""
        self.run_button.disabled, self.stop_button.disabled = True, False
        mode = "at the same time" if self.concurrent.value else "one after another"
        self.status.ok(f"running {len(prompts)} prompts on {', '.join(engines)} ({mode})...")
        try:
            cmp = self.wb.compare(prompts, params, engines, concurrent=self.concurrent.value,
                                  chat=self.chat.value, on_delta=self._on_delta,
                                  cancel=self._cancel)
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True
        self.comparison = cmp
        self.summary.value = html_table(cmp.summary(), COMPARE_COLUMNS)
        self._throttle.flush()
        same = sum(cmp.agreement(i)["identical"] for i in range(len(prompts)))
        self.status.ok(f"done: {same}/{len(prompts)} prompts gave identical tokens on every "
                       "engine")

    def _on_delta(self, engine: str, index: int, run) -> None:
        self.live[engine][index] = run
        self._throttle()

    def _draw(self) -> None:
        self.draws += 1
        badges = ([agreement_badge(self.comparison, i) for i in range(len(self._prompts))]
                  if self.comparison is not None else None)
        self.grid.value = compare_grid_html(self._prompts, self._engines, self.live, badges)

    def text(self, engine: str, index: int) -> str:
        """The text shown for `engine` on prompt `index` so far."""
        run = self.live.get(engine, {}).get(index)
        return run.text if run is not None else ""
