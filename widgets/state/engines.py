"""Engines tab: add an engine from a kind, a name and knob texts; remove one; the engines table."""

from __future__ import annotations

from widgets.formatting import html_table
from widgets.forms import knob_fields, parse_knobs
from widgets.presenters import ENGINE_COLUMNS, engines_rows
from widgets.state.base import TabState


class EnginesState(TabState):
    name = "engines"

    def kinds(self) -> tuple[str, ...]:
        return self.wb.engine_kinds()

    @staticmethod
    def knob_fields(kind: str) -> list[tuple[str, object]]:
        return knob_fields(kind)

    def proposed_name(self, kind: str) -> str:
        """The kind itself, or kind-2, kind-3, ... when taken."""
        name, k = kind, 2
        while name in self.wb.engines:
            name, k = f"{kind}-{k}", k + 1
        return name

    def add(self, kind: str, name: str, knob_texts: dict[str, str]) -> None:
        """Parse the knobs and build the engine in a background task."""
        self.tasks.run(self._add, kind, name.strip(), dict(knob_texts))

    def _add(self, kind: str, name: str, knob_texts: dict[str, str]) -> None:
        knobs = parse_knobs(kind, knob_texts)
        self.ok(f"building {kind} engine {name!r}...")
        self.changed()
        self.wb.add_engine(name, kind, **knobs)
        self.ok(f"added {name!r} ({kind})")
        self.changed()

    def remove(self, name: str | None) -> None:
        self.tasks.run(self._remove, name)

    def _remove(self, name: str | None) -> None:
        if not name:
            raise ValueError("no engine to remove")
        self.wb.remove_engine(name)
        self.ok(f"removed {name!r}; its device memory is freed")
        self.changed()

    def table_html(self) -> str:
        return html_table(engines_rows(self.wb), ENGINE_COLUMNS)
