"""Prometheus metrics, written in the text exposition format (version 0.0.4) without a client library.

Only what the service needs: counters and gauges with labels, and cumulative histograms. Every update
takes one lock, so the batching worker thread and the event loop can both record.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "RequestMetrics", "ServiceMetrics"]

#: Latency buckets in seconds: 1 ms .. 30 s, roughly x2.5 apart.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets: powers of two up to 1024.
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))

LabelValues = tuple[str, ...]
M = TypeVar("M", bound="_Metric")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str] | None) -> LabelValues:
        labels = labels or {}
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.label_names)}")
        return tuple(str(labels[name]) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when scraped: set explicitly, or computed by a callback (e.g. the live queue size)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, float] = {}
        self._callbacks: dict[LabelValues, Callable[[], float]] = {}

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def set_function(self, function: Callable[[], float], **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._callbacks[key] = function

    def render(self) -> list[str]:
        with self._lock:
            values = dict(self._values)
            callbacks = dict(self._callbacks)
        for key, function in callbacks.items():
            values[key] = float(function())
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(values.items())
        ]


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set, as Prometheus histograms are."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, label_names: Sequence[str] = (), buckets: Iterable[float] = ()
    ) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets:
            raise ValueError(f"{name}: a histogram needs at least one bucket")
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            # Non-cumulative here; cumulated when rendered.
            index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + float(value)

    def snapshot(self, **labels: str) -> tuple[dict[float, int], float, int]:
        """(cumulative count per upper bound including +Inf, sum, count) for one label set."""
        key = self._key(labels)
        with self._lock:
            counts = list(self._counts.get(key, [0] * (len(self.buckets) + 1)))
            total = self._sums.get(key, 0.0)
        cumulative, running = {}, 0
        for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
            running += count
            cumulative[bound] = running
        return cumulative, total, running

    def render(self) -> list[str]:
        with self._lock:
            keys = sorted(self._counts)
        lines = self.header()
        for key in keys:
            labels = dict(zip(self.label_names, key, strict=True))
            cumulative, total, count = self.snapshot(**labels)
            for bound, running in cumulative.items():
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return lines


class Registry:
    """An ordered collection of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: M) -> M:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The service's metrics: HTTP requests, the batching queue, batch sizes and per-stage latencies."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.register
        self.requests = add(
            Counter("hsrl_http_requests_total", "HTTP requests by route and status.", ("method", "route", "status"))
        )
        self.request_latency = add(
            Histogram(
                "hsrl_http_request_duration_seconds", "Total time to answer a request.", ("route",), LATENCY_BUCKETS
            )
        )
        self.queue_size = add(Gauge("hsrl_queue_items", "Items waiting in a model's batching queue.", ("model",)))
        self.rejected = add(Counter("hsrl_queue_rejected_total", "Requests refused: the queue was full.", ("model",)))
        self.batch_size = add(Histogram("hsrl_batch_size", "Items per model batch.", ("model",), BATCH_BUCKETS))
        self.queue_wait = add(
            Histogram(
                "hsrl_queue_wait_seconds",
                "Time an item waited in the queue before its batch started.",
                ("model",),
                LATENCY_BUCKETS,
            )
        )
        self.inference = add(Histogram("hsrl_inference_seconds", "Model time per batch.", ("model",), LATENCY_BUCKETS))
        self.items = add(Counter("hsrl_embedded_items_total", "Items embedded by a model.", ("model",)))
        self.abandoned = add(
            Counter(
                "hsrl_abandoned_requests_total",
                "Requests whose client disconnected before their embeddings were ready (their work is dropped).",
                ("model",),
            )
        )
        self.index_vectors = add(Gauge("hsrl_index_vectors", "Vectors held by an index.", ("index",)))

    def render(self) -> str:
        return self.registry.render()


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
