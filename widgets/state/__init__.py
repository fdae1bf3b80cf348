"""What each tab does, once, for both toolkits: the ipywidgets views (`widgets/jupyter/`) and the
Panel views (`widgets/dashboard/`) are thin bindings of widgets to these objects.

A tab's state object holds the tab's data (a conversation, a comparison in progress, bench
results), turns form values into calls on the `Workbench` facade (in a background task, so a
click never blocks the kernel or the Panel server), and renders what the page shows as HTML
strings. It reports to its view through two callbacks given at construction:
- `status(text, error)`: a status line (errors are shown, never raised);
- `changed()`: its data changed, redraw (throttled by the state where text streams).
No toolkit imports here.
"""
