"""Model tab (Panel): load a model by source and dtype (tensor-parallel size when several devices
exist); its configuration, the devices and the memory in use. Logic: `widgets.state.model`."""

from __future__ import annotations

import panel as pn

from widgets.dashboard.common import OnSession, StatusLine
from widgets.state.model import ModelState


class ModelPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("model")
        self.state = ModelState(wb, self.status.show, OnSession(self.redraw))
        tp = self.state.tp_options()
        self.source = pn.widgets.TextInput(label="model", value="embedded", width=380,
                                           css_classes=["wb-model-source"],
                                           placeholder="embedded | /path/to/hf_dir | file.gguf")
        self.dtype = pn.widgets.Select(label="dtype", options=["float32", "bfloat16", "float16"],
                                       value="float32", width=120)
        self.tp = pn.widgets.Select(label="tensor parallel", width=120, visible=len(tp) > 1,
                                    options=tp, value=1)
        self.load_button = pn.widgets.Button(label="Load", color="primary", width=100,
                                             align="end")
        self.details = pn.pane.HTML("")
        self.devices = pn.pane.HTML("")
        self.load_button.on_click(lambda _: self.state.load(self.source.value.strip(),
                                                            self.dtype.value, self.tp.value))
        if wb.model is not None:
            self.status.show(f"Loaded {wb.model.name}")
        self.redraw()

    def redraw(self) -> None:
        self.load_button.disabled = self.state.busy
        self.details.object = self.state.details_html()
        self.devices.object = self.state.devices_html()

    def refresh(self) -> None:
        self.redraw()

    def __panel__(self):
        return pn.Column(pn.Row(self.source, self.dtype, self.tp, self.load_button),
                         self.status.pane, self.details, pn.pane.Markdown("**Devices**"),
                         self.devices)
