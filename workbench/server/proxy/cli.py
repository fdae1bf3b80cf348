"""`workbench proxy --config routes.yaml`: serve the proxy until Ctrl-C.

Hook for `workbench/cli.py`: `add_proxy_parser(subparsers)` adds the sub-command (and sets
`func=run_proxy`); `run_proxy(args) -> int` runs it: exit code 0 after a clean Ctrl-C, 2 on a usage
error (a config error naming the field, an unset key variable, a taken port, a model that does not
load). It builds the config's `local:` engines (one model load per source and dtype), prints the
URL, each route and a curl command once the proxy accepts requests, and logs backends going down
and up, and failovers, to stderr. The proxy's own API key defaults to `$WORKBENCH_API_KEY`.
Importing this module loads neither JAX, FastAPI nor httpx.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import Any, TextIO


def add_proxy_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "proxy", help="one OpenAI endpoint routing by model to local engines and upstream servers",
        description="Route /v1/completions and /v1/chat/completions by model name to local "
                    "engines and upstream OpenAI-compatible servers, with streaming, failover, "
                    "health checks and /metrics, until Ctrl-C. The config's format is described "
                    "in workbench/server/proxy/config.py and the README.")
    p.add_argument("--config", required=True,
                   help="the routes: a .yaml, .yml or .json file (upstream keys come from the "
                        "environment variables it names)")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default: 8080; 0 picks a free port")
    p.add_argument("--api-key", default=os.environ.get("WORKBENCH_API_KEY"),
                   help="require 'Authorization: Bearer KEY' from clients "
                        "(default: $WORKBENCH_API_KEY)")
    p.set_defaults(func=run_proxy)
    return p


def _build_engines(config: Any) -> dict[tuple[str, int], Any]:
    """Build every `local:` backend (one model load per (source, dtype))."""
    from workbench.server.cli import engine_class, load_model

    models: dict[tuple[str, str | None], Any] = {}
    engines: dict[tuple[str, int], Any] = {}
    try:
        for route, index, spec in config.local_specs():
            key = (spec.model, spec.dtype)
            if key not in models:
                models[key] = load_model(spec.model, dtype=spec.dtype)
            engines[(route, index)] = engine_class(spec.engine)(models[key], **dict(spec.knobs))
    except BaseException:
        _close(engines.values())
        raise
    return engines


def _close(engines: Any) -> None:
    for engine in engines:
        close = getattr(engine, "close", None)
        if callable(close):
            close()


def describe(config: Any) -> str:
    """One line per route: its backends in order and its strategy."""
    lines = []
    for route in config.routes.values():
        names = []
        for b in route.backends:
            if hasattr(b, "url"):
                names.append(f"{b.url} ({b.model})")
            else:
                names.append(b.name or getattr(b.engine, "engine_name", "local"))
        lines.append(f"  {route.name} -> {', '.join(names)} [{route.strategy}]")
    return "\n".join(lines)


def run_proxy(args: argparse.Namespace, *, stop: threading.Event | None = None,
              out: TextIO | None = None) -> int:
    """Run `workbench proxy`; blocks until Ctrl-C (or `stop` is set, for tests)."""
    from workbench.server.cli import curl_example
    from workbench.server.proxy.config import load_config

    out = out or sys.stdout
    log = logging.getLogger("workbench.proxy")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        config = load_config(args.config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        engines = _build_engines(config)
    except (ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from workbench.server.proxy.app import serve_proxy

    try:
        handle = serve_proxy(config.with_engines(engines), host=args.host, port=args.port,
                             api_key=args.api_key, stop_engines=True)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        _close(engines.values())
        return 2
    first = next(iter(config.routes))
    print(f"Proxy at {handle.public_url} serving:\n{describe(config)}\nTry:\n"
          f"{curl_example(handle.url, first, args.api_key)}\nPress Ctrl-C to stop.",
          file=out, flush=True)
    stop = stop or threading.Event()
    try:
        while handle.running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("\nStopping...", file=out, flush=True)
    finally:
        handle.stop()
        _close(engines.values())
    return 0
