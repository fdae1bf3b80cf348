"""workbench: a Jupyter-centric LLM inference workbench on JAX/Flax.

    import workbench
    lm = workbench.load_model("embedded")            # SmolLM2-135M-Instruct, offline
    engine = workbench.vInference(lm)                # or vSurge(lm), eSurge(lm): background engines
    engine.generate("Hello", workbench.SamplingParams(max_tokens=32))
    server = workbench.serve(engine)                 # OpenAI-compatible API in the background
    proxy = workbench.serve_proxy({"smol": [engine, {"url": "http://host:8000/v1"}]})

    bench = workbench.Workbench()                    # the facade the UI holds: load, engines,
    bench.load("embedded")                           # compare, serve, bench, metrics history

Names are imported lazily, so `import workbench` is cheap and the server's dependencies are only
needed when the server is used.
"""

from __future__ import annotations

import importlib

from workbench.heap import limit_malloc_arenas
from workbench.xla_flags import apply_xla_flags

__version__ = "0.1.0"

limit_malloc_arenas()  # before JAX starts its threads (see workbench/heap.py)
apply_xla_flags()  # before JAX starts a backend (see workbench/xla_flags.py)

_EXPORTS = {
    "load_model": "workbench.loading.loader",
    "LoadedModel": "workbench.loading.loader",
    "random_model": "workbench.loading.loader",
    "ModelConfig": "workbench.models.config",
    "SamplingParams": "workbench.sampling_params",
    "Tokenizer": "workbench.tokenizer",
    "IncrementalDetokenizer": "workbench.detokenizer",
    "RequestOutput": "workbench.engines.types",
    "CompletionOutput": "workbench.engines.types",
    "RequestStatus": "workbench.engines.types",
    "EngineOverloadedError": "workbench.engines.types",
    "PromptTooLongError": "workbench.engines.types",
    "vInference": "workbench.engines.vinference",
    "vSurge": "workbench.engines.vsurge",
    "eSurge": "workbench.engines.esurge",
    "MetricsCollector": "workbench.metrics",
    "serve": "workbench.server",
    "Workbench": "workbench.facade",
    "Comparison": "workbench.comparison",
    "MetricsHistory": "workbench.metrics_history",
    "run_bench": "workbench.loadgen",
    "create_app": "workbench.server",
    "serve_proxy": "workbench.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    return __all__
