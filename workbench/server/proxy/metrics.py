"""The proxy's Prometheus metrics, in their own `CollectorRegistry` (two proxies in one process do
not collide), under the engines' prefix (`workbench:` by default). Labels: `model_name` (the
public name) and `backend` (the backend's name from the config).

    proxy_requests_total{model_name, backend}              attempts sent to a backend
    proxy_request_errors_total{model_name, backend, kind}  failed attempts, by ERROR_KINDS
    proxy_requests_in_flight{model_name, backend}          attempts not finished yet
    proxy_request_latency_seconds{model_name, backend}     arrival at the proxy -> last byte,
                                                           requests that succeeded
    proxy_time_to_first_token_seconds{model_name, backend} arrival -> first streamed event that
                                                           carries text (streams only)
    proxy_failovers_total{model_name, backend}             failures of `backend` after which the
                                                           next backend was tried
    proxy_unavailable_total{model_name}                    requests no backend could serve (503)
    proxy_backend_up{backend}                              1 up, 0 marked down

`ProxyMetrics` has a `.registry`, so `render_many([proxy_metrics, *engine_collectors])` renders
it next to the local engines' metrics. Buckets are the engines' `LATENCY_BUCKETS` (0.5 ms up).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workbench.prometheus_metrics import LATENCY_BUCKETS, validate_prefix

# connect: no connection; timeout: connect/first byte/total ran out; http_5xx, http_429, http_4xx:
# the backend's answer; malformed: not SSE/JSON; stream: the stream broke after it began;
# engine: a local engine failed; cancelled: the client went away.
ERROR_KINDS = ("connect", "timeout", "http_5xx", "http_429", "http_4xx", "malformed", "stream",
               "engine", "cancelled")


class ProxyMetrics:
    """See the module docstring."""

    def __init__(self, prefix: str = "workbench:"):
        p = validate_prefix(prefix)
        self.registry = CollectorRegistry()
        labels = ("model_name", "backend")
        reg = self.registry
        self.requests = Counter(p + "proxy_requests", "Requests sent to a backend.", labels,
                                registry=reg)
        self.errors = Counter(p + "proxy_request_errors", "Failed requests to a backend, by kind.",
                              labels + ("kind",), registry=reg)
        self.in_flight = Gauge(p + "proxy_requests_in_flight", "Requests in flight to a backend.",
                               labels, registry=reg)
        self.latency = Histogram(p + "proxy_request_latency_seconds",
                                 "Latency (s) of successful requests, arrival to last byte.",
                                 labels, buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram(p + "proxy_time_to_first_token_seconds",
                              "Time (s) from arrival to the first streamed event with text.",
                              labels, buckets=LATENCY_BUCKETS, registry=reg)
        self.failovers = Counter(p + "proxy_failovers", "Backend failures followed by a try of "
                                 "the next backend.", labels, registry=reg)
        self.unavailable = Counter(p + "proxy_unavailable", "Requests no backend could serve.",
                                   ("model_name",), registry=reg)
        self.backend_up = Gauge(p + "proxy_backend_up", "1 if the backend is up, 0 if marked down.",
                                ("backend",), registry=reg)

        self._series: dict[tuple[str, str], Series] = {}

    def series(self, model_name: str, backend: str) -> Series:
        """The labelled children of one (route, backend) pair, created at 0 on first use (so they
        show before traffic) and cached (a `labels()` lookup per event costs a lock and a dict)."""
        s = self._series.get((model_name, backend))
        if s is None:
            s = self._series[(model_name, backend)] = Series(self, model_name, backend)
            self.unavailable.labels(model_name)
        return s

    def set_up(self, backend: str, up: bool) -> None:
        self.backend_up.labels(backend).set(1 if up else 0)


class Series:
    """The metric children of one (model_name, backend) pair."""

    __slots__ = ("requests", "in_flight", "latency", "ttft", "failovers", "errors")

    def __init__(self, m: ProxyMetrics, model_name: str, backend: str):
        self.requests = m.requests.labels(model_name, backend)
        self.in_flight = m.in_flight.labels(model_name, backend)
        self.latency = m.latency.labels(model_name, backend)
        self.ttft = m.ttft.labels(model_name, backend)
        self.failovers = m.failovers.labels(model_name, backend)
        self.errors = {kind: m.errors.labels(model_name, backend, kind) for kind in ERROR_KINDS}
