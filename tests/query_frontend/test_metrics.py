"""The metrics registry: Clipper's report shape, and merging several workers' figures."""

from __future__ import annotations

import orjson
import pytest

from query_frontend.metrics import MetricsRegistry


def _entries(
    report: dict[str, list[dict[str, dict[str, str]]]], kind: str
) -> dict[str, dict[str, str]]:
    return {name: fields for entry in report[kind] for name, fields in entry.items()}


def test_merged_workers_add_counts_and_pool_samples() -> None:
    first, second = MetricsRegistry(), MetricsRegistry()
    first.counter("app:a:num_predictions").increment(3)
    second.counter("app:a:num_predictions").increment(4)
    second.counter("app:b:num_predictions").increment(1)
    first.ratio("app:a:default_prediction_ratio").increment(1, 4)
    second.ratio("app:a:default_prediction_ratio").increment(0, 6)
    for value in (1.0, 2.0, 3.0):
        first.histogram("app:a:prediction_latency").insert(value)
    for value in (10.0, 20.0):
        second.histogram("app:a:prediction_latency").insert(value)
    first.meter("app:a:prediction_throughput").mark(5)
    second.meter("app:a:prediction_throughput").mark(7)

    # Snapshots travel between processes as JSON.
    snapshots = [orjson.loads(orjson.dumps(r.snapshot())) for r in (first, second)]
    report = MetricsRegistry.merged(snapshots).report()

    counters = _entries(report, "counters")
    assert counters["app:a:num_predictions"] == {"count": "7"}
    assert counters["app:b:num_predictions"] == {"count": "1"}
    ratio = _entries(report, "ratio_counters")["app:a:default_prediction_ratio"]
    assert float(ratio["ratio"]) == pytest.approx(0.1)
    latency = _entries(report, "histograms")["app:a:prediction_latency"]
    assert latency["size"] == "5"
    assert float(latency["max"]) == 20.0
    assert float(latency["p50"]) == 3.0
    meter = _entries(report, "meters")["app:a:prediction_throughput"]
    assert float(meter["rate"]) > 0
    assert set(meter) == {"unit", "rate", "rate_1min", "rate_5min", "rate_15min"}


def test_metrics_of_removed_apps_and_model_versions_are_dropped() -> None:
    registry = MetricsRegistry()
    for app in ("kept", "gone"):
        registry.counter(f"app:{app}:num_predictions").increment(1)
        registry.histogram(f"app:{app}:prediction_latency").insert(1.0)
    for version in ("1", "2"):
        registry.counter(f"model:m:{version}:batches").increment(1)
        registry.ratio(f"model:m:{version}:cache_hit_ratio").increment(0, 1)
        registry.meter(f"model:m:{version}:prediction_throughput").mark(1)
    registry.counter("internal:aggregate_num_predictions").increment(4)

    registry.retain({"kept"}, {("m", "2")})

    report = registry.report()
    assert sorted(name for kind in report for entry in report[kind] for name in entry) == [
        "app:kept:num_predictions",
        "app:kept:prediction_latency",
        "internal:aggregate_num_predictions",
        "model:m:2:batches",
        "model:m:2:cache_hit_ratio",
        "model:m:2:prediction_throughput",
    ]


def _gauges(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, failing on a name given twice."""
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            assert line.endswith(" gauge")
            continue
        name, value = line.split(" ")
        assert name not in gauges, f"{name} is given twice"
        gauges[name] = float(value)
    return gauges


def test_prometheus_names_are_clippers_and_stay_distinct_when_two_apps_would_share_one() -> None:
    registry = MetricsRegistry()
    registry.counter("app:simple-example:num_predictions").increment(5)
    registry.histogram("model:sum-model:1:prediction_latency").insert(2.0)
    for app, count in (("my-app", 1), ("my_app", 2), ("my.app", 3)):
        registry.counter(f"app:{app}:num_predictions").increment(count)

    gauges = _gauges(registry.prometheus_text())

    assert gauges["app_simple_example_num_predictions_count"] == 5
    assert gauges["model_sum_model_1_prediction_latency_p99"] == 2.0
    assert "app_my_app_num_predictions_count" not in gauges
    counts = {name: value for name, value in gauges.items() if name.startswith("app_my_app_")}
    assert sorted(counts.values()) == [1, 2, 3]
    assert gauges["app_my_app_num_predictions_a0c8d7a3_count"] == 1
    # Each keeps its name from scrape to scrape: the suffix comes from its own JSON name.
    assert _gauges(registry.prometheus_text()).keys() == gauges.keys()
