"""Notebook UI for workbench (ipywidgets now; Panel/Bokeh apps to come).

Imports workbench; workbench never imports widgets.
"""

from widgets.model_loader import ModelLoader, config_table_html

__all__ = ["ModelLoader", "config_table_html"]
