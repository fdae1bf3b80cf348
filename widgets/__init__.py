"""The workbench's UI: ipywidgets views for notebooks and a Panel dashboard for `panel serve`.

- `WorkbenchApp(workbench=None)`: the ipywidgets app (tabs Model, Engines, Playground, Compare,
  Metrics, Server, Bench), for Jupyter, JupyterLab, VS Code and Colab.
- `widgets.dashboard`: the same tabs as a Panel app (`workbench dashboard`, or
  `panel serve widgets/dashboard/serve.py`); imported on first use, so the notebook app does not
  load Panel.
- `ModelLoader`: the model form on its own.

Imports workbench; workbench never imports widgets.
"""

from widgets.app import WorkbenchApp
from widgets.model_loader import ModelLoader, config_table_html

__all__ = ["WorkbenchApp", "ModelLoader", "config_table_html"]
