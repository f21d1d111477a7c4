"""Prometheus metrics through ``prometheus_client``: the service's counters, gauges and histograms in a registry
of its own (two services in one process never share samples), plus the library's process, platform and
garbage-collector collectors, exposed in the text format at ``GET /metrics``.

:class:`ServiceMetrics` keeps the small call style the engine uses (``metric.inc(model=name)``,
``metric.observe(seconds, route=path)``, ``gauge.set_function(callback, model=name)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE", "Labelled", "RequestMetrics", "ServiceMetrics"]

#: The exposition's content type (text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Latency buckets in seconds: 1 ms .. 30 s, roughly x2.5 apart.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets: powers of two up to 1024.
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))
del GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # the default registry's instances; ours are built below


class Labelled:
    """A prometheus_client metric with labels passed as keywords: ``inc(2, model="m")``, ``observe(0.1, ...)``."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    def _child(self, labels: dict[str, str]) -> Any:
        return self.metric.labels(**{name: str(value) for name, value in labels.items()}) if labels else self.metric

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def set_function(self, function: Callable[[], float], **labels: str) -> None:
        self._child(labels).set_function(function)


class ServiceMetrics:
    """The service's metrics: HTTP requests, the batching queue, batch sizes and per-stage latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

        def metric(kind: type, name: str, doc: str, labels: Sequence[str], **extra: Any) -> Labelled:
            return Labelled(kind(name, doc, list(labels), registry=self.registry, **extra))

        self.requests = metric(Counter, "hsrl_http_requests", "HTTP requests by route and status.",
                               ("method", "route", "status"))  # fmt: skip
        self.request_latency = metric(Histogram, "hsrl_http_request_duration_seconds",
                                      "Total time to answer a request.", ("route",),
                                      buckets=LATENCY_BUCKETS)  # fmt: skip
        self.queue_size = metric(Gauge, "hsrl_queue_items", "Items waiting in a model's batching queue.", ("model",))
        self.rejected = metric(Counter, "hsrl_queue_rejected", "Requests refused: the queue was full.", ("model",))
        self.batch_size = metric(Histogram, "hsrl_batch_size", "Items per model batch.", ("model",),
                                 buckets=BATCH_BUCKETS)  # fmt: skip
        self.queue_wait = metric(Histogram, "hsrl_queue_wait_seconds",
                                 "Time an item waited in the queue before its batch started.", ("model",),
                                 buckets=LATENCY_BUCKETS)  # fmt: skip
        self.inference = metric(Histogram, "hsrl_inference_seconds", "Model time per batch.", ("model",),
                                buckets=LATENCY_BUCKETS)  # fmt: skip
        self.items = metric(Counter, "hsrl_embedded_items", "Items embedded by a model.", ("model",))
        self.abandoned = metric(Counter, "hsrl_abandoned_requests",
                                "Requests whose client disconnected before their embeddings were ready "
                                "(their work is dropped).", ("model",))  # fmt: skip
        self.index_vectors = metric(Gauge, "hsrl_index_vectors", "Vectors held by an index.", ("index",))

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


class RequestMetrics:
    """Pure ASGI middleware counting requests by method, route template and status, and timing them.

    The route is the matched template (``/index/{name}``), never the raw path, so the label set stays small.
    """

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(method=scope["method"], route=template, status=str(status))
            self.metrics.request_latency.observe(time.perf_counter() - started, route=template)
