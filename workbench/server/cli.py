"""`workbench serve`: load a model, build an engine, serve the OpenAI-compatible API until Ctrl-C.

Hook for `workbench/cli.py`: `add_serve_parser(subparsers)` adds the sub-command (and sets
`func=run_serve`); `run_serve(args) -> int` runs it: exit code 0 after a clean Ctrl-C, 2 on a usage
error (an engine that cannot be imported, a taken port). It prints the URL and a ready-to-paste
curl command once the server accepts requests. The API key defaults to `$WORKBENCH_API_KEY`.
SIGTERM or Ctrl-C (SIGINT) stop it gracefully: new requests get 503 while the requests in flight
finish for up to `--drain-timeout` seconds, then the server and the engine stop.
Importing this module loads neither JAX nor FastAPI (both are imported when the command runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Callable, TextIO

from workbench.engines.catalog import engine_kinds

ENGINES = engine_kinds()  # workbench.engines.catalog (imports no engine)


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Load a model, build an engine and serve /v1/completions, "
                    "/v1/chat/completions, /v1/models, /metrics, ... until Ctrl-C.")
    p.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct), a local HF directory, a .gguf file "
                        "or a Hugging Face Hub id (default: embedded)")
    p.add_argument("--engine", choices=ENGINES, default="vinference", help="default: vinference")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000; 0 picks a free port")
    p.add_argument("--api-key", default=os.environ.get("WORKBENCH_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $WORKBENCH_API_KEY)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length per request")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on accelerators")
    p.add_argument("--served-model-name", default=None,
                   help="the name clients send as 'model' (default: the model's name)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="an engine knob, repeatable: the keyword arguments of the engine's "
                        "constructor, e.g. --engine-arg scheduling_policy=priority "
                        "--engine-arg max_num_seqs=16 (eSurge), --engine-arg "
                        "max_concurrent_decodes=8 (vSurge), --engine-arg max_batch_size=8 "
                        "(vInference); an unknown name lists the engine's knobs")
    p.add_argument("--precompile", action="store_true",
                   help="compile the engine's shapes before accepting requests (vsurge: every "
                        "shape it can dispatch, so no request waits for the compiler; minutes "
                        "on a CPU with a long --max-model-len)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM or Ctrl-C, stop accepting (503) and let the requests in "
                        "flight finish for up to this many seconds (default: 30)")
    d = p.add_argument_group(
        "several hosts", "one process per host (a TPU pod slice, GPU nodes): every process runs "
        "the same command; process 0 serves, the others mirror its device steps (README: "
        "'Running on a pod slice / several nodes')")
    d.add_argument("--distributed", action="store_true",
                   help="join a jax.distributed job; without the three options below JAX "
                        "detects the cluster (Cloud TPU, SLURM, Open MPI)")
    d.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    d.add_argument("--num-processes", type=int, default=None)
    d.add_argument("--process-id", type=int, default=None)
    d.add_argument("--mesh", default=None, metavar="DPxTP",
                   help="e.g. 2x8 (default: tp = one host's devices, dp = the hosts)")
    d.add_argument("--step-timeout", type=float, default=60.0,
                   help="seconds the leader waits for the others at a step before it marks the "
                        "engine failed (/health 503); default 60")
    p.set_defaults(func=run_serve)
    return p


def _join_job(args: argparse.Namespace) -> Any:
    """`--distributed`: join the job; returns the global mesh."""
    from workbench import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    dp = tp = None
    if args.mesh:
        try:
            dp, tp = (int(x) for x in args.mesh.lower().split("x"))
        except ValueError:
            raise ValueError(f"--mesh must look like 2x8 (dp x tp), got {args.mesh!r}") from None
    return distributed.global_mesh(dp, tp)


def load_model(source: str, dtype: str | None = None, **kwargs: Any) -> Any:
    """`workbench.loading.loader.load_model`, imported only when a model is loaded."""
    from workbench.loading.loader import load_model as load

    return load(source, dtype=dtype, **kwargs)


def engine_class(name: str) -> type:
    """The engine class for `--engine` (imported lazily); ImportError with a clear message."""
    from workbench.engines.catalog import engine_class as lookup

    try:
        return lookup(name)
    except ValueError as exc:
        raise ImportError(str(exc)) from exc


def engine_args(kind: str, texts: list[str]) -> dict[str, Any]:
    """`--engine-arg NAME=VALUE` options as the engine's keyword arguments, typed and checked by
    `catalog.parse_knob` before the model loads (a typo costs no load); ValueError naming the bad
    one."""
    from workbench.engines.catalog import parse_knob

    knobs = dict(parse_knob(kind, text) for text in texts)
    if "max_model_len" in knobs:
        raise ValueError("set max_model_len with --max-model-len, not --engine-arg")
    return knobs


def curl_example(url: str, model: str, api_key: str | None) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}
    parts = [f"curl {url}/v1/chat/completions", "-H 'Content-Type: application/json'"]
    if api_key:  # the key itself is not printed: export WORKBENCH_API_KEY first
        parts.append('-H "Authorization: Bearer $WORKBENCH_API_KEY"')
    parts.append(f"-d {shlex.quote(json.dumps(body))}")
    return " \\\n  ".join(parts)


def _on_sigterm(callback) -> Callable[[], None]:
    """Call `callback` on SIGTERM (main thread only; a no-op elsewhere); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: callback())
    return lambda: signal.signal(signal.SIGTERM, previous)


def run_serve(args: argparse.Namespace, *, stop: threading.Event | None = None,
              out: TextIO | None = None) -> int:
    """Run `workbench serve`; blocks until Ctrl-C (or `stop` is set, for tests)."""
    from workbench.server.handle import serve

    out = out or sys.stdout
    try:
        cls = engine_class(args.engine)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed = getattr(args, "distributed", False)
    try:
        knobs = engine_args(args.engine, getattr(args, "engine_arg", None) or [])
        if distributed:
            if args.engine not in ("vinference", "vsurge") or getattr(args, "precompile", False):
                raise ValueError("--distributed runs vinference or vsurge, without --precompile")
            mesh = _join_job(args)
            model = load_model(args.model, dtype=args.dtype, mesh=mesh)
        else:
            model = load_model(args.model, dtype=args.dtype)
        engine = cls(model, max_model_len=args.max_model_len, **knobs)
    except (ValueError, OSError) as exc:  # unknown source, offline hub id, bad length or knob
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if distributed:
        from workbench import distributed as dist

        if not dist.is_leader():
            print(f"Process {dist.process_index()} of {dist.process_count()}: mirroring the "
                  "leader's device steps.", file=out, flush=True)
            dist.follow(engine)
            return 0
        dist.attach(engine, step_timeout=args.step_timeout)
    name = args.served_model_name or model.name
    if getattr(args, "precompile", False):
        print(f"Compiling {args.engine}'s shapes before serving...", file=out, flush=True)
        t0 = time.perf_counter()
        engine.precompile()
        print(f"Compiled in {time.perf_counter() - t0:.1f} s.", file=out, flush=True)
    try:
        handle = serve({name: engine}, host=args.host, port=args.port, api_key=args.api_key,
                       stop_engines=True)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        engine.close()
        return 2
    settings = "".join(f", {k}={v!r}" for k, v in knobs.items())
    print(f"Serving {name} ({args.engine}{settings}, max_model_len {engine.max_model_len}) at "
          f"{handle.public_url}\nTry:\n{curl_example(handle.url, name, args.api_key)}\n"
          "Press Ctrl-C to stop.", file=out, flush=True)
    stop = stop or threading.Event()
    restore = _on_sigterm(stop.set)
    try:
        while handle.running and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        drain = getattr(args, "drain_timeout", 30.0)
        print(f"\nStopping: draining the requests in flight (up to {drain:g} s)...", file=out,
              flush=True)
        handle.stop(drain=drain)
        restore()
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        if distributed:
            engine.channel.close()  # the followers return
    return 0
