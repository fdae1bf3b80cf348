"""`serve(...)`: run the API server in a background thread (for notebooks) and get a handle.

Contract:
- `serve(engines, host="127.0.0.1", port=0, api_key=None, timeout=30, **kw) -> ServerHandle`.
  `engines` is what `create_app` takes (or a ready FastAPI app); `**kw` go to `create_app`, except
  `log_level` (uvicorn's, default "warning"). The listening socket is bound here, so port 0 picks a
  free port and `handle.port` is the real one; a taken port raises `OSError` naming it at once.
  uvicorn's `Server.run(sockets=[sock])` runs in a daemon thread with its own event loop (no
  nest_asyncio; fine inside Jupyter's running loop). `serve` returns once the server accepts
  requests; if it fails to start (e.g. `engine.start()` raised) that error is raised as
  `RuntimeError`, and after `timeout` seconds a `TimeoutError`.
- `ServerHandle`: `.url` (http://host:port), `.host`, `.port`, `.public_url` (in Google Colab the
  proxied URL from `google.colab.kernel.proxyPort`, else `.url`), `.running`, `.app`,
  `.stop(timeout=10, drain=None)` (with `drain` seconds: stop accepting, new requests get 503,
  and let the requests in flight finish for up to `drain` seconds; then end what is left, shut
  down, join; idempotent), and use as a context manager. `stop()` ends by returning the C
  heap's free pages to the OS (`release_free_heap`), so start/stop cycles do not grow RSS.
  After `stop()` the thread is gone and the port can be bound again.
- uvicorn's logging config is not applied (`log_config=None`), so a notebook's logging setup stays.
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from workbench.heap import release_free_heap
from workbench.server.app import create_app, end_generations
from workbench.server.drain import num_in_flight, start_draining, wait_drained

logger = logging.getLogger("workbench.server")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "is already in use" if exc.errno in (98, 48, 10048) else f"cannot be bound: {exc}"
        raise OSError(exc.errno, f"cannot serve on {host}:{port}: port {port} {reason}") from exc
    sock.set_inheritable(True)
    return sock


def _colab_url(port: int) -> str | None:
    if "google.colab" not in sys.modules:
        return None
    try:
        from google.colab.output import eval_js  # type: ignore[import-not-found]

        return str(eval_js(f"google.colab.kernel.proxyPort({port})"))
    except Exception:  # noqa: BLE001 - not in a live Colab kernel
        logger.warning("could not get the Colab proxy URL for port %d", port, exc_info=True)
        return None


class ServerHandle:
    """A running background server; see the module docstring."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket,
                 host: str, port: int, app: FastAPI):
        self._server = server
        self._thread = thread
        self._sock = sock
        self.host = host
        self.port = port
        self.app = app
        self._stopped = False
        self._public_url: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def public_url(self) -> str:
        if self._public_url is None:
            self._public_url = _colab_url(self.port) or self.url
        return self._public_url

    @property
    def running(self) -> bool:
        return (not self._stopped and self._thread.is_alive() and self._server.started
                and not self._server.should_exit)

    def stop(self, timeout: float = 10.0, drain: float | None = None) -> bool:
        """With `drain` seconds, first drain: new requests get 503 and the requests in flight may
        finish for up to `drain` seconds. Then end what is still in flight (its clients get a 503
        or a stream error event), shut down, join the thread. uvicorn cancels what is still
        running after `timeout / 2` seconds, and is forced to exit after `timeout`. Returns
        whether nothing was left in flight to end."""
        if self._stopped:
            return True
        drained = True
        if drain is not None and self._thread.is_alive():
            start_draining(self.app)
            drained = wait_drained(self.app, drain)
            if not drained:
                logger.warning("server on port %d: %d requests still in flight after a %.1f s "
                               "drain; ending them", self.port, num_in_flight(self.app), drain)
        self._stopped = True
        self._server.config.timeout_graceful_shutdown = max(timeout / 2, 0.1)
        end_generations(self.app)
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
        self._sock.close()
        if self._thread.is_alive():
            logger.warning("server thread on port %d did not stop within %.1f s",
                           self.port, timeout + 5.0)
        gc.collect()  # the stopped app's cycles, so that their memory is free to give back
        release_free_heap()
        return drained

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ServerHandle({self.url}, {state})"


def serve(engines: Any, host: str = "127.0.0.1", port: int = 0,
          api_key: str | dict[str, str] | None = None,
          timeout: float = 30.0, *, log_level: str = "warning", **app_kwargs: Any) -> ServerHandle:
    """Start the server in a background thread; see the module docstring."""
    if isinstance(engines, FastAPI):
        if api_key is not None or app_kwargs:
            raise ValueError("api_key and create_app options apply to engines, not a ready app")
        app = engines
    else:
        app = create_app(engines, api_key=api_key, **app_kwargs)
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, log_config=None, lifespan="on",
                            access_log=False)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - SystemExit on startup failure included
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"workbench-server-{port}", daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, sock, host, port, app)
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            handle.stop()
            cause = getattr(app.state, "startup_error", None) or (failure[0] if failure else None)
            raise RuntimeError(f"the server on {host}:{port} failed to start: {cause!r}") from cause
        if time.monotonic() > deadline:
            handle.stop(timeout=5.0)
            raise TimeoutError(f"the server on {host}:{port} was not ready within {timeout} s")
        time.sleep(0.005)
    return handle
