"""Engines tab (Panel): add an engine (kind, name, knobs from its constructor), see each engine's
state and memory, remove one."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import StatusLine, sync_engines
from widgets.forms import knob_fields, parse_knobs
from widgets.formatting import html_table
from widgets.presenters import ENGINE_COLUMNS, engines_rows
from widgets.tasks import Tasks


class EnginesPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("engines")
        self.tasks = Tasks(self.status.error, "dashboard-engines")
        kinds = list(wb.engine_kinds())
        self.kind = pn.widgets.Select(name="kind", options=kinds, value=kinds[0], width=150,
                                      css_classes=["wb-kind"])
        self.engine_name = pn.widgets.TextInput(name="name", value=kinds[0], width=150,
                                                css_classes=["wb-engine-name"])
        self.add_button = pn.widgets.Button(name="Add engine", button_type="primary",
                                            align="end", width=120)
        self.knobs = pn.GridBox(ncols=4)
        self.knob_inputs: dict = {}
        self.table = pn.pane.HTML("", css_classes=["wb-engines-table"])
        self.remove_name = pn.widgets.Select(name="engine", options=[], width=150,
                                             css_classes=["wb-remove-name"])
        self.remove_button = pn.widgets.Button(name="Remove", button_type="danger", align="end",
                                               width=100)
        self.kind.param.watch(lambda _: self._show_knobs(), "value")
        self.add_button.on_click(lambda _: self.tasks.run(self.add))
        self.remove_button.on_click(lambda _: self.tasks.run(self.remove))
        self._show_knobs()
        self.refresh()

    def _show_knobs(self) -> None:
        kind = self.kind.value
        self.knob_inputs = {knob: pn.widgets.TextInput(name=knob, placeholder=repr(default),
                                                       width=180, css_classes=[f"wb-knob-{knob}"])
                            for knob, default in knob_fields(kind)}
        self.knobs.objects = list(self.knob_inputs.values())
        name, k = kind, 2  # proposed last: when the page shows it, the knob form is the kind's
        while name in self.wb.engines:
            name, k = f"{kind}-{k}", k + 1
        self.engine_name.value = name

    def add(self) -> None:
        kind, name = self.kind.value, self.engine_name.value.strip()
        knobs = parse_knobs(kind, {k: box.value for k, box in self.knob_inputs.items()})
        self.add_button.disabled = True
        self.status.ok(f"building {kind} engine {name!r}...")
        try:
            self.wb.add_engine(name, kind, **knobs)
        finally:
            self.add_button.disabled = False
        self.status.ok(f"added {name!r} ({kind})")
        self.refresh()

    def remove(self) -> None:
        name = self.remove_name.value
        if not name:
            raise ValueError("no engine to remove")
        self.wb.remove_engine(name)
        self.status.ok(f"removed {name!r}; its device memory is freed")
        self.refresh()

    def refresh(self) -> None:
        self.tick()
        sync_engines(self.wb, self.remove_name)

    def tick(self) -> None:
        """Redraw the table (request counts move while engines run); only sends a change."""
        table = html_table(engines_rows(self.wb), ENGINE_COLUMNS)
        if table != self.table.object:
            self.table.object = table

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("**Add an engine** (empty knobs keep the engine's default)"),
            pn.Row(self.kind, self.engine_name, self.add_button), self.knobs, self.status.pane,
            pn.pane.Markdown("**Engines**"), self.table, pn.Row(self.remove_name,
                                                                self.remove_button))
