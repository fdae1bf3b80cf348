"""Model tab: load a model (source, dtype, tensor-parallel size when several devices exist) and see
its configuration, the devices and the memory in use."""

from __future__ import annotations

import html

import ipywidgets as w

from widgets.formatting import html_table
from widgets.model_loader import ModelLoader, config_table_html
from workbench.devices import format_bytes


def devices_html(wb) -> str:
    devices = wb.devices()
    mem = wb.memory()
    rows = [{"device": d["id"], "platform": d["platform"], "kind": d["kind"],
             "in use": format_bytes(d["bytes_in_use"]), "limit": format_bytes(d["bytes_limit"])}
            for d in devices]
    summary = (f"<div style='font-size:12px'>live device arrays "
               f"<b>{format_bytes(mem['live_array_bytes'])}</b>, process RSS "
               f"<b>{format_bytes(mem['process_rss_bytes'])}</b> of "
               f"{format_bytes(mem['host_memory_bytes'])} host memory</div>")
    return html_table(rows) + summary


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
