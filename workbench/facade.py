"""`Workbench`: the one object a notebook, the ipywidgets app or the Panel dashboard holds.

    import workbench as wb
    bench = wb.Workbench()
    bench.load("embedded")                                    # a model (source, dtype, mesh)
    bench.add_engine("vinference", "vinference", max_batch_size=8)
    bench.add_engine("vsurge", "vsurge", max_concurrent_decodes=8, max_model_len=1024)
    cmp = bench.compare(["Hello", "The capital of France is"], wb.SamplingParams(max_tokens=32))
    cmp.summary(), cmp.all_identical
    handle = bench.serve()                                    # OpenAI API over every engine
    bench.bench(num_requests=16, max_concurrency=4)           # the load generator, per engine
    bench.history.series("vsurge")                            # live metrics time series
    bench.close()

It plays the role of the reference stack's `elarge` facade: one place that loads the model and
builds, serves and drops engines. It imports no UI toolkit; the views in `widgets/` hold no engine
logic and call only this.

Contract:
- One model at a time. `load(source)` loads it first and only then stops the server and closes the
  engines built on the previous model (they cannot serve the new one) and the previous model
  itself; a failed load leaves everything as it was. `load` also accepts a ready `LoadedModel`,
  which stays the caller's: the workbench never closes a model it did not load.
- Engines by name: `add_engine(name, kind, **knobs)` (kinds from `engines.catalog`; knobs are
  the engine constructor's keyword arguments, checked by name and type here and by range in the
  constructor: every bad knob is a ValueError naming it). Background engines are started.
  `remove_engine(name)` closes the engine, which frees its device memory. Names are unique,
  non-empty, made of letters, digits, `-`, `_` and `.` (they are the served model names).
- The server: one at a time (`serve` stops a running one first), serving the named engines (all by
  default) under their names; `stop_server()`; removing a served engine restarts the server on the
  same port without it. The server never stops the facade's engines.
- `history` samples every engine's `metrics()` (2 Hz by default) from the first `load` until
  `close()`.
- Thread-safe: several browser sessions may call it at once. Structural changes (load, add,
  remove, serve) take a lock; runs (compare, bench, stream) work on a snapshot of the engines and
  report an engine removed under them as that engine's error.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

from workbench.comparison import Comparison, DeltaCallback, run_comparison
from workbench.devices import device_info, memory_summary
from workbench.engines.catalog import check_knobs, engine_class, engine_kinds
from workbench.engines.types import RequestOutput
from workbench.loading.loader import LoadedModel, load_model
from workbench.loadgen import BenchResult, run_bench
from workbench.metrics_history import MetricsHistory
from workbench.sampling_params import SamplingParams

logger = logging.getLogger("workbench.facade")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class Workbench:
    """Model, engines, comparisons, server, load generator and metrics history; see the module
    docstring."""

    def __init__(self, *, history_interval: float = 0.5, history_size: int = 1200,
                 request_log_size: int = 200):
        self.model: LoadedModel | None = None
        self._owns_model = False  # closed with the workbench only if the workbench loaded it
        self._engines: dict[str, Any] = {}
        self._kinds: dict[str, str] = {}
        self._knobs: dict[str, dict] = {}
        self._lock = threading.RLock()
        self._server = None
        self._served: list[str] = []
        self._server_options: dict[str, Any] = {}
        self.request_log: collections.deque = collections.deque(maxlen=request_log_size)
        self.history = MetricsHistory(self._snapshots, interval=history_interval,
                                      maxlen=history_size)
        self._closed = False
        self.version = 0  # grows by one at every structural change
        self._listeners: list = []

    # ---- change notification --------------------------------------------------------------------
    def subscribe(self, fn) -> None:
        """Call `fn()` after every structural change (model loaded, engine added or removed,
        server started or stopped), from the thread that made it. Views refresh their engine
        lists from it; a listener that raises is logged and kept."""
        self._listeners.append(fn)

    def unsubscribe(self, fn) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _changed(self) -> None:
        self.version += 1
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a broken view must not break the workbench
                logger.exception("workbench listener failed")

    # ---- the model ------------------------------------------------------------------------------
    def load(self, source: str | LoadedModel = "embedded", dtype: str | None = None,
             mesh: Any = None, *, attention_backend: str = "xla",
             progress: bool = False) -> LoadedModel:
        """Load a model (see `load_model`) and make it the workbench's; see the module docstring."""
        self._check_open()
        owned = not isinstance(source, LoadedModel)
        if not owned:
            lm = source
        else:
            if not isinstance(source, str) or not source.strip():
                raise ValueError("source must be 'embedded', a local directory, a .gguf file or "
                                 f"a hub id, got {source!r}")
            lm = load_model(source.strip(), dtype=dtype, mesh=mesh,
                            attention_backend=attention_backend, progress=progress)
        with self._lock:
            old, old_owned = self.model, self._owns_model
            self.stop_server()
            for name in list(self._engines):
                self.remove_engine(name)
            self.model, self._owns_model = lm, owned
            if old is not None and old is not lm and old_owned:
                old.close()
        self.history.start()
        self._changed()
        return lm

    def model_info(self) -> dict[str, Any] | None:
        """Name, parameter count, dtype, load time, config fields and mesh of the loaded model."""
        lm = self.model
        if lm is None:
            return None
        c = lm.config
        return {
            "name": lm.name, "path": lm.path, "parameters": lm.num_params, "dtype": str(lm.dtype),
            "load_seconds": lm.load_seconds, "architecture": c.architecture,
            "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position_embeddings,
            "mesh": dict(lm.mesh.shape) if lm.mesh is not None else None,
        }

    @staticmethod
    def devices() -> list[dict[str, Any]]:
        return device_info()

    @staticmethod
    def memory() -> dict[str, Any]:
        return memory_summary()

    # ---- engines --------------------------------------------------------------------------------
    @staticmethod
    def engine_kinds() -> tuple[str, ...]:
        return engine_kinds()

    @property
    def engines(self) -> dict[str, Any]:
        """{name: engine}, a copy."""
        with self._lock:
            return dict(self._engines)

    def engine(self, name: str) -> Any:
        with self._lock:
            if name not in self._engines:
                raise KeyError(f"no engine named {name!r}; engines: "
                               f"{', '.join(self._engines) or 'none'}")
            return self._engines[name]

    def add_engine(self, name: str, kind: str, **knobs: Any) -> Any:
        """Build, start and register an engine on the loaded model; see the module docstring."""
        self._check_open()
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"engine name must be 1-64 letters, digits, '-', '_' or '.', "
                             f"starting with a letter or digit, got {name!r}")
        cls = engine_class(kind)
        check_knobs(kind, knobs)
        with self._lock:
            if self.model is None:
                raise ValueError("load a model before adding engines")
            if name in self._engines:
                raise ValueError(f"an engine named {name!r} exists; remove it first or pick "
                                 "another name")
            try:
                engine = cls(self.model, **knobs)
            except TypeError as e:  # a knob value the constructor could not use
                raise ValueError(f"bad knobs for {kind}: {e}") from e
            try:
                engine.start()
            except BaseException:
                engine.close()
                raise
            self._engines[name] = engine
            self._kinds[name] = kind
            self._knobs[name] = dict(knobs)
        self._changed()
        return engine

    def remove_engine(self, name: str) -> None:
        """Stop and close the engine (its device memory is freed); restart the server without it
        if it was served."""
        with self._lock:
            engine = self.engine(name)
            del self._engines[name]
            self._kinds.pop(name, None)
            self._knobs.pop(name, None)
            if self._server is not None and name in self._served:
                rest = [n for n in self._served if n != name]
                port = self._server.port
                self.stop_server()
                if rest:
                    self.serve(rest, port=port, **self._server_options)
        engine.close()
        self.history.forget(name)
        self._changed()

    def engine_info(self, name: str) -> dict[str, Any]:
        """Kind, knobs, state ("running" | "idle" | "closed"), KV bytes held, request counts."""
        with self._lock:
            engine = self.engine(name)
            kind, knobs = self._kinds[name], dict(self._knobs[name])
        m = engine.metrics()
        if engine.closed:
            state = "closed"
        elif getattr(engine, "running", False):
            state = "running"
        else:
            state = "idle"
        return {
            "name": name, "kind": kind, "knobs": knobs, "state": state,
            "max_model_len": engine.max_model_len, "kv_cache_bytes": engine.kv_cache_bytes(),
            "running": m["num_requests_running"], "waiting": m["num_requests_waiting"],
            "finished": m["num_requests_finished"],
            "generation_tokens": m["generation_tokens_total"],
            "served": name in self._served and self._server is not None,
        }

    def engines_info(self) -> list[dict[str, Any]]:
        return [self.engine_info(n) for n in self.engines]

    def _select(self, names: Iterable[str] | None) -> dict[str, Any]:
        with self._lock:
            if names is None:
                selected = dict(self._engines)
            else:
                names = list(names)
                missing = [n for n in names if n not in self._engines]
                if missing:
                    raise ValueError(f"no engine named {missing[0]!r}; engines: "
                                     f"{', '.join(self._engines) or 'none'}")
                selected = {n: self._engines[n] for n in names}
        if not selected:
            raise ValueError("no engines: add one with add_engine(name, kind)")
        return selected

    # ---- running requests -----------------------------------------------------------------------
    def prompt_ids(self, prompt: str | Sequence[Mapping[str, str]] | list[int], *,
                   chat: bool = False) -> list[int] | str:
        """A prompt as the engines take it: chat messages (or text with `chat=True`) go through
        the chat template into token ids; other text and token ids pass through."""
        lm = self._require_model()
        if isinstance(prompt, str) and not chat:
            return prompt
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], Mapping):
            if lm.tokenizer is None:
                raise ValueError("this model has no tokenizer, so no chat template")
            ids = lm.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True,
                                                   tokenize=True)
            return [int(i) for i in ids]
        return list(prompt)

    def stream(self, engine: str, prompt, sampling_params: SamplingParams | None = None, *,
               chat: bool = False, request_id: str | None = None) -> Iterator[RequestOutput]:
        """Stream one request on one engine (the Playground); `abort(engine, request_id)` ends
        it. Chat messages, or text with `chat=True`, use the chat template."""
        eng = self.engine(engine)
        ids = self.prompt_ids(prompt, chat=chat)
        return eng.stream(ids, sampling_params, request_id=request_id)

    def abort(self, engine: str, request_id: str) -> bool:
        try:
            return self.engine(engine).abort(request_id)
        except KeyError:
            return False

    def compare(self, prompts: Sequence[Any] | str, sampling_params: SamplingParams | None = None,
                engines: Iterable[str] | None = None, *, concurrent: bool = False,
                chat: bool = False, on_delta: DeltaCallback | None = None,
                cancel: threading.Event | None = None) -> Comparison:
        """The same requests on several engines (all by default); see `workbench.comparison`.
        With `chat=True` each text prompt is sent as one user message through the chat
        template."""
        selected = self._select(engines)
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("compare needs at least one prompt")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and not p.strip():
                raise ValueError(f"prompt {i} is empty")
        sent = [self.prompt_ids(p, chat=chat) for p in prompts]
        with self._lock:
            kinds = {n: self._kinds.get(n, "?") for n in selected}
        result = run_comparison(selected, sent, sampling_params, kinds=kinds,
                                concurrent=concurrent, on_delta=on_delta, cancel=cancel)
        result.prompts = prompts  # as the caller wrote them
        return result

    # ---- the server -----------------------------------------------------------------------------
    @property
    def server(self):
        """The running `ServerHandle`, or None."""
        return self._server

    @property
    def served_engines(self) -> list[str]:
        return list(self._served) if self._server is not None else []

    def serve(self, engines: Iterable[str] | None = None, host: str = "127.0.0.1", port: int = 0,
              *, api_key: str | None = None, timeout: float = 30.0):
        """Serve the named engines (all by default) under their names; returns the handle
        (`.url`, `.public_url` in Colab, `.stop()`). A running server is stopped first."""
        from workbench.server.handle import serve

        self._check_open()
        with self._lock:
            selected = self._select(engines)
            self.stop_server()
            handle = serve(selected, host=host, port=port, api_key=api_key, timeout=timeout,
                           stop_engines=False, request_log=self.request_log)
            self._server, self._served = handle, list(selected)
            self._server_options = {"host": host, "api_key": api_key, "timeout": timeout}
        self._changed()
        return handle

    def stop_server(self) -> None:
        with self._lock:
            handle, self._server = self._server, None
            self._served = []
        if handle is not None:
            handle.stop()
            self._changed()

    # ---- the load generator ---------------------------------------------------------------------
    def bench(self, engines: Iterable[str] | None = None, *, via: str = "direct",
              num_requests: int = 32, request_rate: float = math.inf, max_concurrency: int = 8,
              max_tokens: int = 32, prompt_lens: tuple[int, int] = (16, 64), seed: int = 0,
              warmup: bool = True, on_result=None) -> list[BenchResult]:
        """The load generator (`workbench.loadgen`) on each engine, one after another. `via`:
        "direct" (engine.astream) or "http" (the workbench's server when it serves the engine,
        else a temporary one)."""
        if via not in ("direct", "http"):
            raise ValueError(f"via must be 'direct' or 'http', got {via!r}")
        selected = self._select(engines)
        results = []
        for name, engine in selected.items():
            kw = dict(num_requests=num_requests, request_rate=request_rate,
                      max_concurrency=max_concurrency, max_tokens=max_tokens,
                      prompt_lens=prompt_lens, seed=seed, warmup=warmup, name=name,
                      on_result=(None if on_result is None
                                 else lambda d, t, n=name: on_result(n, d, t)))
            if via == "direct":
                results.append(run_bench(engine, **kw))
                continue
            handle = self._server if name in self.served_engines else None
            temporary = None
            if handle is None:
                from workbench.server.handle import serve

                temporary = handle = serve({name: engine}, stop_engines=False)
            try:
                results.append(run_bench(engine, url=handle.url, model=name,
                                         api_key=self._server_options.get("api_key")
                                         if temporary is None else None, **kw))
            finally:
                if temporary is not None:
                    temporary.stop()
        return results

    # ---- metrics --------------------------------------------------------------------------------
    def _snapshots(self) -> dict[str, dict]:
        out = {}
        for name, engine in self.engines.items():
            try:
                out[name] = engine.metrics()
            except Exception:  # noqa: BLE001 - an engine closed meanwhile
                continue
        return out

    def metrics(self) -> dict[str, dict]:
        """{engine name: metrics snapshot}."""
        return self._snapshots()

    # ---- lifecycle ------------------------------------------------------------------------------
    def _require_model(self) -> LoadedModel:
        if self.model is None:
            raise ValueError("no model loaded: call load() first")
        return self.model

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this Workbench is closed")

    def close(self) -> None:
        """Stop the history and the server, close every engine and the model."""
        if self._closed:
            return
        self.history.stop()
        self.stop_server()
        with self._lock:
            for name in list(self._engines):
                self.remove_engine(name)
            if self.model is not None and self._owns_model:
                self.model.close()
            self.model = None
            self._closed = True

    def __enter__(self) -> "Workbench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self.model.name if self.model is not None else "no model"
        server = f", serving at {self._server.url}" if self._server is not None else ""
        return f"Workbench({model}, engines={list(self._engines)}{server})"
