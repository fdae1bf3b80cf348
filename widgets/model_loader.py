"""`ModelLoader`: a notebook form that loads a model and shows its configuration.

    from widgets import ModelLoader
    loader = ModelLoader()
    loader            # displays: source, dtype, Load button, status, config table
    lm = loader.model # the LoadedModel once loaded

Loading runs in a background thread so the notebook stays responsive; `load()` can also be called
directly (it blocks and returns the model), which is what tests do.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as w

from workbench.loading.loader import LoadedModel, load_model

_FIELDS = ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
           "rope_theta", "tie_word_embeddings")


def config_table_html(lm: LoadedModel) -> str:
    """An HTML table of the model's name, size, dtype and main config fields."""
    rows = [("name", lm.name), ("parameters", f"{lm.num_params / 1e6:.1f} M"),
            ("dtype", str(lm.dtype)), ("load time", f"{lm.load_seconds:.1f} s")]
    rows += [(f, getattr(lm.config, f)) for f in _FIELDS]
    body = "".join(f"<tr><td><b>{html.escape(str(k))}</b></td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


class ModelLoader(w.VBox):
    """Source + dtype form with a Load button; `.model` holds the loaded model."""

    def __init__(self, source: str = "embedded", dtype: str = "float32",
                 on_loaded: Callable[[LoadedModel], None] | None = None,
                 loader: Callable[..., LoadedModel] = load_model):
        self.source = w.Text(value=source, description="model",
                             placeholder="embedded | /path/to/hf_dir | file.gguf | org/name")
        self.dtype = w.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype,
                                description="dtype")
        self.button = w.Button(description="Load", button_style="primary", icon="download")
        self.status = w.HTML()
        self.details = w.HTML()
        self.model: LoadedModel | None = None
        self._on_loaded = on_loaded
        self._loader = loader
        self.button.on_click(lambda _: threading.Thread(target=self._load_safely,
                                                        daemon=True).start())
        super().__init__([w.HBox([self.source, self.dtype, self.button]), self.status,
                          self.details])

    def load(self) -> LoadedModel:
        """Load synchronously with the current form values; errors are raised (and shown)."""
        self.button.disabled = True
        self.status.value = f"Loading <code>{html.escape(self.source.value)}</code>..."
        try:
            lm = self._loader(self.source.value.strip(), dtype=self.dtype.value)
        except Exception as e:
            self.status.value = (f"<span style='color:#b00'>Error: "
                                 f"{html.escape(str(e))}</span>")
            raise
        finally:
            self.button.disabled = False
        self.model = lm
        self.status.value = f"Loaded <b>{html.escape(lm.name)}</b>."
        self.details.value = config_table_html(lm)
        if self._on_loaded is not None:
            self._on_loaded(lm)
        return lm

    def _load_safely(self) -> None:
        try:
            self.load()
        except Exception:  # noqa: BLE001 - already shown in the status line
            pass
