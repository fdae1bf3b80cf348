"""Engines tab (Panel): add an engine (kind, name, knobs from its constructor), see each engine's
state and memory, remove one. Logic: `widgets.state.engines`."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import OnSession, StatusLine, sync_engines
from widgets.state.engines import EnginesState


class EnginesPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("engines")
        self.state = EnginesState(wb, self.status.show, OnSession(self.redraw))
        kinds = list(self.state.kinds())
        self.kind = pn.widgets.Select(label="kind", options=kinds, value=kinds[0], width=150,
                                      css_classes=["wb-kind"])
        self.engine_name = pn.widgets.TextInput(label="name", value=kinds[0], width=150,
                                                css_classes=["wb-engine-name"])
        self.add_button = pn.widgets.Button(label="Add engine", color="primary",
                                            align="end", width=120)
        self.knobs = pn.GridBox(ncols=4)
        self.knob_inputs: dict = {}
        self.table = pn.pane.HTML("", css_classes=["wb-engines-table"])
        self.remove_name = pn.widgets.Select(label="engine", options=[], width=150,
                                             css_classes=["wb-remove-name"])
        self.remove_button = pn.widgets.Button(label="Remove", color="danger", align="end",
                                               width=100)
        self.kind.param.watch(lambda _: self._show_knobs(), "value")
        self.add_button.on_click(lambda _: self.state.add(
            self.kind.value, self.engine_name.value,
            {k: box.value for k, box in self.knob_inputs.items()}))
        self.remove_button.on_click(lambda _: self.state.remove(self.remove_name.value))
        self._show_knobs()
        self.redraw()

    def _show_knobs(self) -> None:
        kind = self.kind.value
        self.knob_inputs = {knob: pn.widgets.TextInput(label=knob, placeholder=repr(default),
                                                       width=180, css_classes=[f"wb-knob-{knob}"])
                            for knob, default in self.state.knob_fields(kind)}
        self.knobs.objects = list(self.knob_inputs.values())
        # proposed last: when the page shows the name, the knob form is the kind's
        self.engine_name.value = self.state.proposed_name(kind)

    def redraw(self) -> None:
        self.add_button.disabled = self.remove_button.disabled = self.state.busy
        self.tick()
        sync_engines(self.wb, self.remove_name)

    def tick(self) -> None:
        """Redraw the table (request counts move while engines run); only sends a change."""
        table = self.state.table_html()
        if table != self.table.object:
            self.table.object = table

    def refresh(self) -> None:
        self.redraw()

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("**Add an engine** (empty knobs keep the engine's default)"),
            pn.Row(self.kind, self.engine_name, self.add_button), self.knobs, self.status.pane,
            pn.pane.Markdown("**Engines**"), self.table, pn.Row(self.remove_name,
                                                                self.remove_button))
