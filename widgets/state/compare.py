"""Compare tab: the same prompts on several engines, text streaming per (engine, prompt) cell,
then a summary table and an agreement badge per prompt; `stop()` cancels the run."""

from __future__ import annotations

import threading

from widgets.formatting import agreement_badge, html_table
from widgets.forms import parse_prompts, sampling_params
from widgets.grid import cell_html, compare_grid_html
from widgets.presenters import COMPARE_COLUMNS
from widgets.state.base import TabState
from widgets.throttle import Throttle


class CompareState(TabState):
    name = "compare"

    def __init__(self, wb, status=None, changed=None, max_rate: float = 20.0):
        super().__init__(wb, status, changed)
        self.prompts: list[str] = []
        self.engines: list[str] = []
        self.live: dict[str, dict] = {}  # engine -> prompt index -> RequestRun, as it streams
        self.comparison = None  # the last finished Comparison
        self._cancel = threading.Event()
        self.throttle = Throttle(self.changed, max_rate=max_rate)

    def run(self, prompts_text: str, sampling: dict, engines, *, chat: bool = True,
            concurrent: bool = False) -> bool:
        """Validate and start a comparison; False (and an error shown) if refused."""
        try:
            if self.busy:
                raise ValueError("a comparison is running: stop it first")
            prompts = parse_prompts(prompts_text)
            params = sampling_params(sampling)
            engines = list(engines)
            if not engines:
                raise ValueError("select at least one engine (add engines in the Engines tab)")
        except ValueError as e:
            self.error(str(e))
            return False
        self.prompts, self.engines = prompts, engines
        self.live, self.comparison = {e: {} for e in engines}, None
        self._cancel = threading.Event()
        self.tasks.run(self._run, params, chat, concurrent)
        return True

    def _run(self, params, chat, concurrent) -> None:
        mode = "at the same time" if concurrent else "one after another"
        self.ok(f"running {len(self.prompts)} prompts on {', '.join(self.engines)} ({mode})...")
        self.changed()
        cmp = self.wb.compare(self.prompts, params, self.engines, concurrent=concurrent,
                              chat=chat, on_delta=self._on_delta, cancel=self._cancel)
        self.comparison = cmp
        self.throttle.flush()
        same = sum(cmp.agreement(i)["identical"] for i in range(len(self.prompts)))
        cold = cmp.compiled()
        note = ("; timings include compiling new shapes ("
                + ", ".join(f"{name}: {sec:.1f} s" for name, sec in cold.items())
                + "): run again for warm numbers") if cold else ""
        self.ok(f"done: {same}/{len(self.prompts)} prompts gave identical tokens on every "
                f"engine{note}")

    def _on_delta(self, engine: str, index: int, run) -> None:
        self.live[engine][index] = run
        self.throttle()

    def stop(self) -> None:
        self._cancel.set()

    # ---- what the page shows ----------------------------------------------------------------
    def text(self, engine: str, index: int) -> str:
        run = self.live.get(engine, {}).get(index)
        return run.text if run is not None else ""

    def cell_html(self, engine: str, index: int) -> str:
        return cell_html(self.live.get(engine, {}).get(index))

    def badge_html(self, index: int) -> str:
        return agreement_badge(self.comparison, index) if self.comparison is not None else ""

    def grid_html(self) -> str:
        badges = ([self.badge_html(i) for i in range(len(self.prompts))]
                  if self.comparison is not None else None)
        return compare_grid_html(self.prompts, self.engines, self.live, badges)

    def summary_html(self) -> str:
        if self.comparison is None:
            return ""
        return html_table(self.comparison.summary(), COMPARE_COLUMNS)
