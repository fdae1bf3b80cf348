"""Model tab (Panel): load a model by source and dtype (tensor-parallel size when several devices
exist); its configuration, the devices and the memory in use."""

from __future__ import annotations

import html

import panel as pn

from widgets.dashboard.common import StatusLine
from widgets.presenters import devices_html
from widgets.model_loader import config_table_html
from widgets.tasks import Tasks


class ModelPanel(pn.viewable.Viewer):
    def __init__(self, wb, **params):
        super().__init__(**params)
        self.wb = wb
        self.status = StatusLine("model")
        self.tasks = Tasks(self.status.error, "dashboard-model")
        self.source = pn.widgets.TextInput(name="model", value="embedded", width=380,
                                           css_classes=["wb-model-source"],
                                           placeholder="embedded | /path/to/hf_dir | file.gguf")
        self.dtype = pn.widgets.Select(name="dtype", options=["float32", "bfloat16", "float16"],
                                       value="float32", width=120)
        n = len(wb.devices())
        self.tp = pn.widgets.Select(name="tensor parallel", width=120, visible=n > 1,
                                    options=[k for k in range(1, n + 1) if n % k == 0], value=1)
        self.load_button = pn.widgets.Button(name="Load", button_type="primary", width=100,
                                             align="end")
        self.details = pn.pane.HTML("")
        self.devices = pn.pane.HTML("")
        self.load_button.on_click(lambda _: self.tasks.run(self.load))
        self.refresh()

    def load(self) -> None:
        self.load_button.disabled = True
        self.status.ok(f"loading {self.source.value}...")
        try:
            lm = self.wb.load(self.source.value, dtype=self.dtype.value,
                              mesh=self.tp.value if self.tp.value > 1 else None)
        finally:
            self.load_button.disabled = False
        self.status.ok(f"Loaded {lm.name} in {lm.load_seconds:.1f} s")
        self.refresh()

    def refresh(self) -> None:
        lm = self.wb.model
        if lm is not None:
            self.details.object = config_table_html(lm)
            if not self.status.pane.object:
                self.status.ok(f"Loaded {html.escape(lm.name)}")
        else:
            self.details.object = "<i>no model loaded</i>"
        self.devices.object = devices_html(self.wb)

    def __panel__(self):
        return pn.Column(pn.Row(self.source, self.dtype, self.tp, self.load_button),
                         self.status.pane, self.details, pn.pane.Markdown("**Devices**"),
                         self.devices)
