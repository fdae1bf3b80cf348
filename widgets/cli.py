"""`workbench dashboard`: serve the dashboard, load a model and build engines, until Ctrl-C.

Hook for `workbench/cli.py` (the one place that sees every layer): `add_dashboard_parser(sub)`
adds the sub-command; `run_dashboard(args, stop=None, out=None) -> int` runs it. The page is
served first (it answers within seconds) and shows the model and engines as they arrive; the
command prints the URL, then what it loaded. Exit code 0 after Ctrl-C, 2 on a usage error (a bad
model source or engine kind, a taken port).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any, TextIO


def add_dashboard_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dashboard", help="the workbench in a browser (Panel dashboard)",
        description="Serve the workbench dashboard: load a model, build engines, compare them, "
                    "watch metrics, start the API server, from a browser.")
    p.add_argument("--model", default="embedded",
                   help="model to load at start: 'embedded' (default), a local HF directory, a "
                        ".gguf file, a hub id, or 'none' to load from the page")
    p.add_argument("--engines", default="vinference,vsurge,esurge",
                   help="engines to build at start, comma-separated (default "
                        "vinference,vsurge,esurge; "
                        "'' for none); sized to share a small machine")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=5006, help="default 5006; 0 picks a free port")
    p.add_argument("--show", action="store_true", help="open the page in a browser")
    p.add_argument("--allow-websocket-origin", action="append", default=None,
                   help="host:port a browser may connect from (repeatable; needed with --host "
                        "0.0.0.0 behind another name)")
    p.set_defaults(func=run_dashboard)
    return p


def run_dashboard(args: argparse.Namespace, *, stop: threading.Event | None = None,
                  out: TextIO | None = None) -> int:
    from widgets.dashboard import DASHBOARD_ENGINES, serve_dashboard
    from workbench.engines.catalog import engine_kinds
    from workbench.facade import Workbench

    out = out or sys.stdout
    t0 = time.perf_counter()
    kinds = [k.strip() for k in (args.engines or "").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in engine_kinds()]
    if unknown:
        print(f"error: unknown engine {unknown[0]!r}; choose from {', '.join(engine_kinds())}",
              file=sys.stderr)
        return 2
    wb = Workbench()
    try:
        handle = serve_dashboard(wb, host=args.host, port=args.port, show=args.show,
                                 websocket_origin=args.allow_websocket_origin)
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"Dashboard at {handle.url} (answering after {time.perf_counter() - t0:.1f} s)",
          file=out, flush=True)
    try:
        if args.model and args.model != "none":
            print(f"Loading {args.model}...", file=out, flush=True)
            try:
                lm = wb.load(args.model, dtype=args.dtype)
            except (ValueError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"Loaded {lm.name} in {lm.load_seconds:.1f} s.", file=out, flush=True)
            for kind in kinds:
                knobs = DASHBOARD_ENGINES.get(kind, {})
                wb.add_engine(kind, kind, **knobs)
                print(f"Engine {kind} ready ({', '.join(f'{k}={v}' for k, v in knobs.items())})",
                      file=out, flush=True)
        print(f"Ready: {handle.url} ({time.perf_counter() - t0:.1f} s). Press Ctrl-C to stop.",
              file=out, flush=True)
        stop = stop or threading.Event()
        while handle.running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("\nStopping...", file=out, flush=True)
    finally:
        handle.stop()
        wb.close()
    return 0
