"""The workbench's UI: ipywidgets views for notebooks and a Panel dashboard for `panel serve`.

- `WorkbenchApp(workbench=None)`: the ipywidgets app (tabs Model, Engines, Playground, Compare,
  Metrics, Server, Bench), for Jupyter, JupyterLab, VS Code and Colab.
- `widgets.dashboard`: the same tabs as a Panel app (`workbench dashboard`, or
  `panel serve widgets/dashboard/serve.py`).
- `ModelLoader`: the model form on its own.

Names are imported lazily (the `workbench` command imports `widgets.cli` without loading Panel,
ipywidgets or JAX). Imports workbench; workbench never imports widgets.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"WorkbenchApp": "widgets.app", "ModelLoader": "widgets.model_loader",
            "config_table_html": "widgets.model_loader"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")


def __dir__():
    return __all__
