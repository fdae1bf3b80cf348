"""The ipywidgets views of the workbench (Jupyter, JupyterLab, VS Code, Colab): one tab per file,
each a `VBox` over a `workbench.Workbench`, holding no engine logic. `widgets.WorkbenchApp` puts
them in tabs."""
