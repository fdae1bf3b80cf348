"""Model tab: load a model (source, dtype, tensor-parallel size when several devices exist) and see
its configuration, the devices and the memory in use."""

from __future__ import annotations

import html

import ipywidgets as w

from widgets.model_loader import ModelLoader, config_table_html
from widgets.presenters import devices_html


class ModelView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        n = len(wb.devices())
        tp_options = [k for k in range(1, n + 1) if n % k == 0]
        self.tp = w.Dropdown(options=tp_options, value=1, description="tensor parallel",
                             style={"description_width": "110px"},
                             layout=w.Layout(display="" if n > 1 else "none"))
        self.loader = ModelLoader(loader=self._load)
        self.devices = w.HTML()
        if wb.model is not None:
            self.loader.model = wb.model
            self.loader.status.value = f"Loaded <b>{html.escape(wb.model.name)}</b>."
            self.loader.details.value = config_table_html(wb.model)
        self.refresh()
        super().__init__([self.loader, self.tp, w.HTML("<b>Devices</b>"), self.devices])

    def _load(self, source: str, dtype: str):
        mesh = self.tp.value if self.tp.value > 1 else None
        lm = self.wb.load(source, dtype=dtype, mesh=mesh)
        self.refresh()
        return lm

    def refresh(self) -> None:
        self.devices.value = devices_html(self.wb)
