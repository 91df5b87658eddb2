"""Clipper's clipper_admin.metrics: metrics that a model's own predict function adds and
reports, served by its replica beside the clipper_mc_* ones."""

from __future__ import annotations

from collections.abc import Sequence

from clipper_admin.exceptions import ClipperException
from model_containers.metrics import UserMetricError, process_user_metrics

DEFAULT_BUCKETS = [5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500]


def add_metric(
    name: str, metric_type: str, description: str, buckets: Sequence[float] = DEFAULT_BUCKETS
) -> None:
    """Adds a Prometheus metric of metric_type ("Gauge", "Counter", "Histogram" or "Summary");
    buckets are a histogram's. Adding a name again does nothing."""
    try:
        process_user_metrics().add(name, metric_type, description, buckets)
    except UserMetricError as e:
        raise ClipperException(str(e)) from None


def report_metric(name: str, val: float) -> None:
    """Reports val to a metric added before: a counter goes up by it, a gauge is set to it, a
    histogram or summary observes it."""
    try:
        process_user_metrics().report(name, val)
    except UserMetricError as e:
        raise ClipperException(str(e)) from None
