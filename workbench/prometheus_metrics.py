"""The Prometheus side of the metrics: metric families, buckets, and merged rendering.

Names follow vLLM's under a configurable prefix (default `workbench:`), labels `model_name` and
`engine`. Latency buckets resolve milliseconds (0.5 ms upward), so fast steps do not all land in
the lowest bucket. `render_many` merges several collectors' registries family by family (one
`# HELP` / `# TYPE` each), for a server that serves several engines.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
)

# Tokens per engine step (vLLM's iteration_tokens_total buckets).
ITERATION_BUCKETS: tuple[float, ...] = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                                        2048.0, 4096.0, 8192.0, 16384.0)

# Choices per request (vLLM's request_params_n buckets, up to the server's limit of 128).
N_BUCKETS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 128.0)

TOKEN_BUCKETS: tuple[float, ...] = tuple(
    float(m * 10**e) for e in range(6) for m in (1, 2, 5)
) + (1_000_000.0,)

_LABELS = ("model_name", "engine")
_PREFIX_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def validate_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"metrics prefix must be a str, got {type(prefix).__name__}")
    if prefix == "":
        return prefix
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"invalid Prometheus metric prefix {prefix!r}: it must match "
            "[a-zA-Z_:][a-zA-Z0-9_:]* (letters, digits, '_' and ':', not starting "
            "with a digit), e.g. 'workbench:'"
        )
    if prefix.startswith("__"):
        raise ValueError(f"invalid Prometheus metric prefix {prefix!r}: names starting with '__' are reserved")
    return prefix


class _Families:
    """The Prometheus metric objects for one (registry, prefix).

    Shared by every collector that uses that registry and prefix, each writing
    its own label children, so several collectors can share a registry.
    """

    def __init__(self, registry: CollectorRegistry, p: str):
        def gauge(name, doc):
            return Gauge(p + name, doc, _LABELS, registry=registry)

        def counter(name, doc, extra=()):
            return Counter(p + name, doc, _LABELS + tuple(extra), registry=registry)

        def hist(name, doc, buckets):
            return Histogram(p + name, doc, _LABELS, buckets=buckets, registry=registry)

        self.running = gauge("num_requests_running", "Number of requests running (prefill or decode).")
        self.waiting = gauge("num_requests_waiting", "Number of requests waiting to be scheduled.")
        self.kv_usage = gauge("kv_cache_usage_perc", "KV-cache usage, a fraction in [0, 1].")
        self.slots_used = gauge("num_slots_used", "Decode slots in use.")
        self.slots_total = gauge("num_slots_total", "Decode slots available.")
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.preemptions = counter("num_preemptions", "Preemptions of running requests.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.success = counter("request_success", "Finished requests by finished_reason.", ("finished_reason",))
        self.rejected = counter("num_requests_rejected", "Requests rejected at admission.")
        self.ttft = hist("time_to_first_token_seconds", "Time to first token (s), from arrival.", LATENCY_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Inter-token latency (s), one sample per token after the first.",
                        LATENCY_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency (s), arrival to finish.",
                        LATENCY_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Queue time (s), arrival to first scheduling.", LATENCY_BUCKETS)
        self.prefill = hist("request_prefill_time_seconds", "Prefill time (s), first scheduling to first token.",
                            LATENCY_BUCKETS)
        self.decode = hist("request_decode_time_seconds", "Decode time (s), first token to finish.", LATENCY_BUCKETS)
        self.req_prompt = hist("request_prompt_tokens", "Prompt tokens per finished request.", TOKEN_BUCKETS)
        self.req_gen = hist("request_generation_tokens", "Generated tokens per finished request.", TOKEN_BUCKETS)
        self.inference = hist("request_inference_time_seconds",
                              "Inference time (s), first scheduling to finish (prefill + decode).",
                              LATENCY_BUCKETS)
        self.params_n = hist("request_params_n", "The n (choices) of finished requests.", N_BUCKETS)
        self.params_max_tokens = hist("request_params_max_tokens",
                                      "The max_tokens of finished requests.", TOKEN_BUCKETS)
        self.iteration_tokens = hist("iteration_tokens_total", "Tokens computed per engine step.",
                                     ITERATION_BUCKETS)
        # (model_name, engine) -> live collector owning those label values.
        self.owners: "weakref.WeakValueDictionary[tuple[str, str], Any]" = weakref.WeakValueDictionary()


_FAMILIES_LOCK = threading.Lock()
_FAMILIES: "weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Families]]" = weakref.WeakKeyDictionary()


def _families_for(registry: CollectorRegistry, prefix: str) -> _Families:
    with _FAMILIES_LOCK:
        per_registry = _FAMILIES.setdefault(registry, {})
        fam = per_registry.get(prefix)
        if fam is None:
            fam = per_registry[prefix] = _Families(registry, prefix)
        return fam


class _MergedCollector:
    """Yields the metric families of several registries, merged family by family."""

    def __init__(self, registries: list[CollectorRegistry]):
        self._registries = registries

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for reg in self._registries:
            for fam in reg.collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                elif out.type != fam.type:
                    raise ValueError(
                        f"metric family {fam.name!r} has type {out.type!r} in one collector and {fam.type!r} in another"
                    )
                for s in fam.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    if key in seen:
                        raise ValueError(
                            f"duplicate sample {s.name}{dict(key[1])} across collectors; "
                            "give each engine instance a distinct engine name"
                        )
                    seen.add(key)
                    out.samples.append(s)
        return list(merged.values())


def render_many(collectors: Iterable[Any]) -> bytes:
    """Prometheus text of several collectors, one ``# HELP``/``# TYPE`` per family.

    Collectors sharing a registry are rendered once.  Raises ``ValueError`` when
    two collectors expose the same series (same name and labels).
    """
    registries: list[CollectorRegistry] = []
    ids: set[int] = set()
    for c in collectors:
        if id(c.registry) not in ids:
            ids.add(id(c.registry))
            registries.append(c.registry)
    return generate_latest(_MergedCollector(registries))


def claim_families(registry: CollectorRegistry, prefix: str, model_name: str, engine: str,
                   owner: Any) -> _Families:
    """The families of (registry, prefix), with the label pair (model_name, engine) claimed by
    `owner`; a pair already claimed by a live collector raises ValueError."""
    fam = _families_for(registry, prefix)
    key = (model_name, engine)
    with _FAMILIES_LOCK:
        if fam.owners.get(key) is not None:
            raise ValueError(
                f"a MetricsCollector for engine={engine!r}, model_name={model_name!r} with prefix "
                f"{prefix!r} already uses this registry; give each engine instance a distinct "
                "engine name"
            )
        fam.owners[key] = owner
    return fam
