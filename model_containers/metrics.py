"""The replica's Prometheus metrics (Clipper's clipper_mc_* names), in a registry of its own."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS_MS = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500)
_FAST_BUCKETS_MS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


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
