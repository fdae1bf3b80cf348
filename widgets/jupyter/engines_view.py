"""Engines tab (ipywidgets): add an engine (kind, name, knobs from the engine's constructor), see
every engine's state and memory, remove one. Logic: `widgets.state.engines`."""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.common import Status
from widgets.state.engines import EnginesState


class EnginesView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.state = EnginesState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
        kinds = self.state.kinds()
        self.kind = w.Dropdown(options=kinds, value=kinds[0], description="kind")
        self.name = w.Text(value=kinds[0], description="name")
        self.knobs = w.VBox()
        self.knob_boxes: dict[str, w.Text] = {}
        self.add_button = w.Button(description="Add engine", button_style="primary", icon="plus")
        self.table = w.HTML()
        self.remove_name = w.Dropdown(description="engine")
        self.remove_button = w.Button(description="Remove", button_style="danger", icon="trash")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.kind.observe(lambda _: self._show_knobs(), names="value")
        self.add_button.on_click(lambda _: self.state.add(
            self.kind.value, self.name.value, {k: b.value for k, b in self.knob_boxes.items()}))
        self.remove_button.on_click(lambda _: self.state.remove(self.remove_name.value))
        self.refresh_button.on_click(lambda _: self.redraw())
        self._show_knobs()
        self.redraw()
        super().__init__([
            w.HTML("<b>Add an engine</b> (empty knobs keep the engine's default)"),
            w.HBox([self.kind, self.name, self.add_button]), self.knobs, self.status,
            w.HTML("<b>Engines</b>"), self.table,
            w.HBox([self.remove_name, self.remove_button, self.refresh_button])])

    def _show_knobs(self) -> None:
        kind = self.kind.value
        self.knob_boxes = {
            knob: w.Text(placeholder=repr(default), description=knob,
                         style={"description_width": "170px"}, layout=w.Layout(width="340px"))
            for knob, default in self.state.knob_fields(kind)}
        boxes = list(self.knob_boxes.values())
        self.knobs.children = [w.HBox(boxes[i:i + 3]) for i in range(0, len(boxes), 3)]
        self.name.value = self.state.proposed_name(kind)

    def redraw(self) -> None:
        self.add_button.disabled = self.remove_button.disabled = self.state.busy
        self.table.value = self.state.table_html()
        names = tuple(self.wb.engines)
        if tuple(self.remove_name.options) != names:
            self.remove_name.options = names

    def refresh(self) -> None:
        self.redraw()
