"""The replica's Prometheus metrics (Clipper's clipper_mc_* names, and those the model's own
code adds), in a registry of its own."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    start_http_server,
)

_LATENCY_BUCKETS_MS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500)
_FAST_BUCKETS_MS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
USER_METRIC_TYPES = ("Gauge", "Counter", "Histogram", "Summary")


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "clipper_mc_pred", "Queries predicted", registry=self.registry
        )  # exported as clipper_mc_pred_total
        self.failed_batches = Counter(
            "clipper_mc_failed_batches", "Batches whose predict failed", registry=self.registry
        )
        self.end_to_end_latency_ms = Histogram(
            "clipper_mc_end_to_end_latency_ms",
            "Time from receiving a batch to sending its answer",
            buckets=_LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.handle_time_ms = Histogram(
            "clipper_mc_handle_time_ms",
            "Time spent in the model's predict",
            buckets=_LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.parse_time_ms = Histogram(
            "clipper_mc_parse_time_ms",
            "Time to turn a batch into model inputs",
            buckets=_FAST_BUCKETS_MS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "clipper_mc_batch_size",
            "Queries per batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.user = UserMetrics(self.registry)
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics on a background thread; returns the port bound (port 0 picks one)."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            server = self._server
            # shutdown() waits for the serving loop, which runs on another thread.
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()


class UserMetricError(ValueError):
    """A metric the model's code added or reported that cannot be kept."""


class UserMetrics:
    """The metrics a model's own code adds and reports (Clipper's clipper_admin.metrics), beside
    the replica's clipper_mc_* ones; predict calls run in several threads at once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._metrics: dict[str, Counter | Gauge | Histogram | Summary] = {}
        self._lock = threading.Lock()

    def add(self, name: str, metric_type: str, description: str, buckets: Sequence[float]) -> None:
        """Adds a metric; adding a name again does nothing, as in Clipper."""
        if metric_type not in USER_METRIC_TYPES:
            raise UserMetricError(
                f"Metric type needs to be one of {list(USER_METRIC_TYPES)}, not {metric_type!r}"
            )
        with self._lock:
            if name in self._metrics:
                return
            try:
                metric: Counter | Gauge | Histogram | Summary
                if metric_type == "Counter":
                    metric = Counter(name, description, registry=self._registry)
                elif metric_type == "Gauge":
                    metric = Gauge(name, description, registry=self._registry)
                elif metric_type == "Histogram":
                    metric = Histogram(name, description, buckets=buckets, registry=self._registry)
                else:
                    metric = Summary(name, description, registry=self._registry)
            except (ValueError, TypeError) as e:
                raise UserMetricError(f"Metric {name!r} cannot be added: {e}") from None
            self._metrics[name] = metric

    def report(self, name: str, value: float) -> None:
        """A counter goes up by value, a gauge is set to it, a histogram or summary observes it."""
        metric = self._metrics.get(name)
        if metric is None:
            raise UserMetricError(
                f"{name} has not been added. Please use clipper_admin.metrics.add_metric to add "
                f"this metric"
            )
        try:
            number = float(value)
            if isinstance(metric, Counter):
                metric.inc(number)
            elif isinstance(metric, Gauge):
                metric.set(number)
            else:
                metric.observe(number)
        except (ValueError, TypeError) as e:
            raise UserMetricError(f"Metric {name!r} cannot report {value!r}: {e}") from None


class _ProcessUserMetrics:
    """Where Clipper's module functions (clipper_admin.metrics) find the replica's UserMetrics:
    the model's code calls them without any handle on the replica, so the replica hands its own
    over once, before it loads the model. Until then, as in a function tried in a notebook,
    they go to a registry nobody serves."""

    def __init__(self) -> None:
        self.metrics = UserMetrics(CollectorRegistry())


_process = _ProcessUserMetrics()


def use_for_user_metrics(metrics: UserMetrics) -> None:
    """Sends this process's clipper_admin.metrics calls to metrics (the replica's)."""
    _process.metrics = metrics


def process_user_metrics() -> UserMetrics:
    return _process.metrics
