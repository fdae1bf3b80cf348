"""Engines tab: add an engine (kind, name, knobs from the engine's constructor), see every engine's
state and memory, remove one (its device memory is freed)."""

from __future__ import annotations

import ipywidgets as w

from widgets.forms import knob_fields, parse_knobs
from widgets.formatting import html_table
from widgets.jupyter.common import Status
from widgets.presenters import ENGINE_COLUMNS, engines_rows
from widgets.tasks import Tasks

class EnginesView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.tasks = Tasks(self.status.error, "engines")
        kinds = wb.engine_kinds()
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
        self.add_button.on_click(lambda _: self.tasks.run(self.add))
        self.remove_button.on_click(lambda _: self.tasks.run(self.remove))
        self.refresh_button.on_click(lambda _: self.refresh())
        self._show_knobs()
        self.refresh()
        super().__init__([
            w.HTML("<b>Add an engine</b> (empty knobs keep the engine's default)"),
            w.HBox([self.kind, self.name, self.add_button]), self.knobs, self.status,
            w.HTML("<b>Engines</b>"), self.table,
            w.HBox([self.remove_name, self.remove_button, self.refresh_button])])

    def _show_knobs(self) -> None:
        kind = self.kind.value
        taken = set(self.wb.engines)
        name, k = kind, 2
        while name in taken:
            name, k = f"{kind}-{k}", k + 1
        self.name.value = name
        self.knob_boxes = {
            knob: w.Text(placeholder=repr(default), description=knob,
                         style={"description_width": "170px"}, layout=w.Layout(width="340px"))
            for knob, default in knob_fields(kind)}
        boxes = list(self.knob_boxes.values())
        self.knobs.children = [w.HBox(boxes[i:i + 3]) for i in range(0, len(boxes), 3)]

    def add(self) -> None:
        """Parse the form and add the engine (blocks; the button runs it in a thread)."""
        kind, name = self.kind.value, self.name.value.strip()
        knobs = parse_knobs(kind, {k: b.value for k, b in self.knob_boxes.items()})
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
        self.table.value = html_table(engines_rows(self.wb), ENGINE_COLUMNS)
        names = tuple(self.wb.engines)
        if tuple(self.remove_name.options) != names:
            self.remove_name.options = names
