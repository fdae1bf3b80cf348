"""`panel serve widgets/dashboard/serve.py`: the dashboard over the process's shared workbench.

    WORKBENCH_MODEL=embedded WORKBENCH_ENGINES=vinference,vsurge,esurge \
        panel serve widgets/dashboard/serve.py
"""

from widgets.dashboard import create_dashboard, shared_workbench

create_dashboard(shared_workbench()).page().servable()
