"""Model tab (ipywidgets): load a model (source, dtype, tensor-parallel size when several devices
exist); its configuration, the devices and the memory in use. Logic: `widgets.state.model`."""

from __future__ import annotations

import ipywidgets as w

from widgets.jupyter.common import Status
from widgets.state.model import ModelState


class ModelView(w.VBox):
    def __init__(self, wb):
        self.wb = wb
        self.status = Status()
        self.state = ModelState(wb, self.status.show, self.redraw)
        self.tasks = self.state.tasks
        tp = self.state.tp_options()
        self.source = w.Text(value="embedded", description="model",
                             placeholder="embedded | /path/to/hf_dir | file.gguf | org/name")
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value="float32",
                                description="dtype")
        self.tp = w.Dropdown(options=tp, value=1, description="tensor parallel",
                             style={"description_width": "110px"},
                             layout=w.Layout(display="" if len(tp) > 1 else "none"))
        self.button = w.Button(description="Load", button_style="primary", icon="download")
        self.details = w.HTML()
        self.devices = w.HTML()
        self.button.on_click(lambda _: self.load())
        if wb.model is not None:
            self.status.show(f"Loaded {wb.model.name}")
        self.redraw()
        super().__init__([w.HBox([self.source, self.dtype, self.tp, self.button]), self.status,
                          self.details, w.HTML("<b>Devices</b>"), self.devices])

    def load(self) -> None:
        self.state.load(self.source.value.strip(), self.dtype.value, self.tp.value)
        self.redraw()

    def redraw(self) -> None:
        self.button.disabled = self.state.busy
        self.details.value = self.state.details_html()
        self.devices.value = self.state.devices_html()

    def refresh(self) -> None:
        self.redraw()
