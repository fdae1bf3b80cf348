"""Compare tab (Panel): the same prompts on several engines, text streaming side by side, then a
summary (TTFT, tok/s, ITL) and a same-tokens badge per prompt. Several browser tabs can compare at
once: each session has its own view and run; the engines are shared."""

from __future__ import annotations

import html
import threading

import panel as pn

from widgets.dashboard.common import StatusLine, read_sampling, sampling_widgets, sync_engines
from widgets.forms import PRESET_PROMPTS, parse_prompts
from widgets.formatting import agreement_badge, html_table
from widgets.grid import cell_html
from widgets.presenters import COMPARE_COLUMNS
from widgets.tasks import Tasks
from widgets.throttle import Throttle

# Redraws of the streaming text per second. Each one costs the server a document patch and the
# browser a re-layout; 10 a second reads as smooth streaming (benchmarks/README.md measures it).
REDRAWS_PER_S = 10.0


class ComparePanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("compare")
        self.tasks = Tasks(self.status.error, "dashboard-compare")
        self.prompts = pn.widgets.TextAreaInput(name="prompts (one per line)", height=100,
                                                value="\n".join(PRESET_PROMPTS[:2]),
                                                sizing_mode="stretch_width",
                                                css_classes=["wb-prompts"])
        self.presets = pn.widgets.Button(name="Preset prompts", width=130)
        self.engines = pn.widgets.MultiChoice(name="engines", options=[], width=300)
        self.chat = pn.widgets.Checkbox(name="chat template", value=True)
        self.concurrent = pn.widgets.Checkbox(name="engines at the same time", value=False)
        self.sampling = sampling_widgets(("max_tokens", "temperature", "seed", "ignore_eos"),
                                         max_tokens=32)
        self.run_button = pn.widgets.Button(name="Run comparison", button_type="primary", width=140)
        self.stop_button = pn.widgets.Button(name="Stop", disabled=True, width=90)
        self.summary = pn.pane.HTML("", css_classes=["wb-compare-summary"])
        # one pane per (engine, prompt) cell: a new token redraws its cell only
        self.grid = pn.Column(css_classes=["wb-compare-grid"], sizing_mode="stretch_width")
        self._cells: dict[tuple[str, int], pn.pane.HTML] = {}
        self._badges: list[pn.pane.HTML] = []
        self.comparison = None
        self.live: dict[str, dict] = {}
        self._prompts: list[str] = []
        self._engines: list[str] = []
        self._cancel = threading.Event()
        self._throttle = Throttle(self._draw, max_rate=REDRAWS_PER_S)
        self.presets.on_click(lambda _: setattr(self.prompts, "value",
                                                "\n".join(PRESET_PROMPTS)))
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self._cancel.set())
        self.refresh()

    def refresh(self) -> None:
        sync_engines(self.wb, self.engines, select_all=True)

    def run(self) -> None:
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

    def _build_grid(self, prompts, engines) -> None:
        line = {"border-bottom": "1px solid #ddd"}
        head = pn.Row(pn.pane.HTML("<b>prompt</b>", width=180),
                      *[pn.pane.HTML(f"<b>{html.escape(e)}</b>", sizing_mode="stretch_width")
                        for e in engines], pn.pane.HTML("<b>tokens</b>", width=190),
                      sizing_mode="stretch_width", styles=line)
        self._cells = {(e, i): pn.pane.HTML(cell_html(None), sizing_mode="stretch_width")
                       for i in range(len(prompts)) for e in engines}
        self._badges = [pn.pane.HTML("", width=190) for _ in prompts]
        rows = [pn.Row(pn.pane.HTML(f"<span style='color:#57606a'>{html.escape(p)}</span>",
                                    width=180),
                       *[self._cells[(e, i)] for e in engines], self._badges[i],
                       sizing_mode="stretch_width", styles=line)
                for i, p in enumerate(prompts)]
        self.grid.objects = [head, *rows]

    def _run(self, prompts, params, engines) -> None:
        self._prompts, self._engines = prompts, engines
        self.live, self.comparison = {e: {} for e in engines}, None
        self._build_grid(prompts, engines)
        self.summary.object = ""
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.status.ok(f"running {len(prompts)} prompts on {', '.join(engines)}...")
        self._throttle.flush()
        try:
            cmp = self.wb.compare(prompts, params, engines, concurrent=self.concurrent.value,
                                  chat=self.chat.value, on_delta=self._on_delta,
                                  cancel=self._cancel)
        finally:
            self.run_button.disabled, self.stop_button.disabled = False, True
        self.comparison = cmp
        self.summary.object = html_table(cmp.summary(), COMPARE_COLUMNS)
        self._throttle.flush()
        same = sum(cmp.agreement(i)["identical"] for i in range(len(prompts)))
        self.status.ok(f"done: {same}/{len(prompts)} prompts gave identical tokens on every "
                       "engine")

    def _on_delta(self, engine, index, run) -> None:
        self.live[engine][index] = run
        self._throttle()

    def _draw(self) -> None:
        for (engine, i), pane in list(self._cells.items()):
            text = cell_html(self.live.get(engine, {}).get(i))
            if text != pane.object:  # only cells that changed are sent to the browser
                pane.object = text
        if self.comparison is not None:
            for i, pane in enumerate(self._badges):
                pane.object = agreement_badge(self.comparison, i)

    def __panel__(self):
        return pn.Column(
            pn.Row(self.prompts, pn.Column(self.presets, self.chat, self.concurrent)),
            pn.Row(self.engines, *self.sampling.values()),
            pn.Row(self.run_button, self.stop_button), self.status.pane, self.summary,
            self.grid, sizing_mode="stretch_width", css_classes=["wb-compare"])
