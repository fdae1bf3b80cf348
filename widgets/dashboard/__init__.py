"""The workbench as a Panel dashboard (`workbench dashboard`, or `panel serve` on
`widgets/dashboard/serve.py`): the tabs of the notebook app, with Bokeh charts, for a browser.

- `create_dashboard(workbench, title=...) -> Dashboard`: one session's page (call it inside a
  Panel session, e.g. from the function given to `pn.serve`); `.servable()` returns the template.
- `serve_dashboard(workbench=None, host="127.0.0.1", port=0, show=False) -> DashboardHandle`: a
  Bokeh server in a background thread (a notebook cell or the CLI), every session over the same
  workbench; `.url`, `.stop()` (restartable: a later call serves again).
- `shared_workbench()`: the process's workbench when `panel serve` runs the module (made on first
  use; `$WORKBENCH_MODEL` and `$WORKBENCH_ENGINES` load a model and engines into it).

Resources are inline (`pn.extension(inline=True)`): the page makes no request to another host.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import panel as pn

from widgets.dashboard.app import SESSIONS, TABS, Dashboard

__all__ = [
    "DASHBOARD_ENGINES",
    "SESSIONS",
    "TABS",
    "Dashboard",
    "DashboardHandle",
    "create_dashboard",
    "serve_dashboard",
    "shared_workbench",
]

# Engines the CLI builds by default, sized to share a 2-core, 24 GB machine with a browser and
# the test suite: ~380 MB of float32 KV cache for vSurge on SmolLM2-135M, vInference's per batch.
DASHBOARD_ENGINES = {
    "vinference": {"max_batch_size": 8, "max_model_len": 1024},
    "vsurge": {"max_concurrent_decodes": 8, "max_model_len": 1024},
    # ~256 MB of pages (5,700 tokens on SmolLM2-135M), shared by up to 8 sequences
    "esurge": {"max_num_seqs": 8, "max_model_len": 1024, "kv_cache_memory": "256MiB"},
}

_shared = None
_shared_lock = threading.Lock()


def _extension() -> None:
    pn.extension(inline=True)


def create_dashboard(workbench, title: str = "workbench") -> Dashboard:
    _extension()
    return Dashboard(workbench, title=title)


def build_engines(workbench, kinds, knobs: dict | None = None) -> None:
    """Add one engine per kind (named after it) with the dashboard's sizes."""
    for kind in kinds:
        workbench.add_engine(kind, kind, **(knobs or DASHBOARD_ENGINES).get(kind, {}))


def shared_workbench():
    """The workbench every `panel serve` session of this process shares."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from workbench.facade import Workbench

            _shared = Workbench()
            model = os.environ.get("WORKBENCH_MODEL")
            if model:
                _shared.load(model)
                kinds = [k for k in os.environ.get("WORKBENCH_ENGINES", "").split(",") if k]
                build_engines(_shared, kinds)
        return _shared


class DashboardHandle:
    """A dashboard served from a background thread; `.stop()` ends it."""

    def __init__(self, thread, host: str, port: int):
        self._thread, self.host, self.port = thread, host, port
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=10)

    def __repr__(self) -> str:
        return f"DashboardHandle({self.url}, {'running' if self.running else 'stopped'})"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_dashboard(workbench=None, *, host: str = "127.0.0.1", port: int = 0,
                    show: bool = False, title: str = "workbench",
                    websocket_origin: list[str] | None = None,
                    timeout: float = 30.0) -> DashboardHandle:
    """Serve the dashboard in a background thread; see the module docstring."""
    from workbench.facade import Workbench

    wb = workbench if workbench is not None else Workbench()
    _extension()
    port = port or _free_port(host)
    origins = websocket_origin or [f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]

    def page():
        return create_dashboard(wb, title=title).page()

    thread = pn.serve({"/": page}, port=port, address=host, show=show, threaded=True,
                      websocket_origin=origins, title=title)
    handle = DashboardHandle(thread, host, port)
    deadline = time.monotonic() + timeout
    while True:  # ready when the port accepts connections
        try:
            with socket.create_connection((host if host != "0.0.0.0" else "127.0.0.1", port),
                                          timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                handle.stop()
                raise RuntimeError(f"the dashboard on {host}:{port} did not start") from None
            time.sleep(0.05)
    return handle
