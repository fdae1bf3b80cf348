"""Model tab: load a model into the workbench; its configuration and the devices as HTML."""

from __future__ import annotations

from widgets.model_loader import config_table_html
from widgets.presenters import devices_html
from widgets.state.base import TabState


class ModelState(TabState):
    name = "model"

    def tp_options(self) -> list[int]:
        """Tensor-parallel sizes the devices allow ([1] on one device)."""
        n = len(self.wb.devices())
        return [k for k in range(1, n + 1) if n % k == 0]

    def load(self, source: str, dtype: str, tp: int = 1) -> None:
        """Start loading (returns at once); the view learns the outcome through its callbacks."""
        self.tasks.run(self._load, source, dtype, tp)

    def _load(self, source: str, dtype: str, tp: int) -> None:
        self.ok(f"loading {source}...")
        self.changed()
        lm = self.wb.load(source, dtype=dtype, mesh=tp if tp > 1 else None)
        self.ok(f"Loaded {lm.name} in {lm.load_seconds:.1f} s")
        self.changed()

    def details_html(self) -> str:
        lm = self.wb.model
        return config_table_html(lm) if lm is not None else "<i>no model loaded</i>"

    def devices_html(self) -> str:
        return devices_html(self.wb)
