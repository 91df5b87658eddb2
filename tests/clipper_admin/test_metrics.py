"""clipper_admin.metrics: metrics a deployed function adds and reports, served by its replica."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin import metrics as clipper_metrics
from clipper_admin.deployers.python import create_endpoint
from tests.conftest import predict, wait_for


def _replica_samples(conn: ClipperConnection) -> dict[str, float]:
    admin = conn.cm.get_admin_addr()
    targets = requests.get(f"http://{admin}/admin/prometheus_targets", timeout=10).json()
    assert len(targets) == 1
    text = requests.get(f"http://{targets[0]['targets'][0]}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or sample.labels == {"le": "10.0"}
    }


def test_a_deployed_function_reports_its_own_metrics_beside_the_replicas(
    clipper_conn: ClipperConnection,
) -> None:
    def predict_sums(xs: list[Any]) -> list[str]:
        import clipper_admin.metrics as metrics

        metrics.add_metric("sums_total_inputs", "Counter", "Inputs summed")
        metrics.add_metric("sums_last_batch", "Gauge", "Inputs in the last batch")
        metrics.add_metric("sums_value", "Histogram", "Sums", [1.0, 10.0, 100.0])
        metrics.report_metric("sums_total_inputs", len(xs))
        metrics.report_metric("sums_last_batch", len(xs))
        for x in xs:
            metrics.report_metric("sums_value", float(sum(x)))
        return [str(sum(x)) for x in xs]

    create_endpoint(clipper_conn, "sums", "doubles", predict_sums)
    for value in (1.0, 5.0, 50.0):
        assert predict(clipper_conn, "sums", {"input": [value]})["output"] == value

    samples: dict[str, float] = {}

    def reported() -> bool:
        samples.update(_replica_samples(clipper_conn))
        return samples.get("sums_total_inputs_total") == 3

    wait_for(reported, 10, "the replica to report the function's metrics")
    assert samples["sums_last_batch"] == 1
    assert samples["sums_value_count"] == 3
    assert samples["sums_value_sum"] == 56
    assert samples["sums_value_bucket"] == 2  # 1 and 5 are at most 10
    assert samples["clipper_mc_pred_total"] == 3


def test_a_metric_reported_before_it_is_added_fails_the_batch_naming_it(
    clipper_conn: ClipperConnection,
) -> None:
    def predict_unadded(xs: list[Any]) -> list[str]:
        import clipper_admin.metrics as metrics

        metrics.report_metric("never_added", 1)
        return ["0"] * len(xs)

    create_endpoint(clipper_conn, "unadded", "doubles", predict_unadded, default_output="d")
    answer = predict(clipper_conn, "unadded", {"input": [1.0]})
    assert answer["default"] is True
    assert "never_added has not been added" in answer["default_explanation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("m1", "Meter", "d"), "Metric type needs to be one of ['Gauge', 'Counter', 'Histogram'"),
        (("", "Gauge", "d"), "Metric '' cannot be added: Metric name should not be empty"),
        (("clipper_mc_pred", "Counter", "d"), "Metric 'clipper_mc_pred' cannot be added"),
    ],
)
def test_a_metric_that_cannot_be_added_is_a_clipper_exception(
    args: tuple[str, str, str], message: str
) -> None:
    from model_containers.metrics import ReplicaMetrics, use_for_user_metrics

    use_for_user_metrics(ReplicaMetrics().user)
    with pytest.raises(ClipperException) as e:
        clipper_metrics.add_metric(*args)
    assert message in str(e.value)


def test_reports_follow_each_metric_type_outside_a_replica_too() -> None:
    clipper_metrics.add_metric("tried_counter", "Counter", "d")
    clipper_metrics.add_metric("tried_counter", "Gauge", "added again: ignored, as in Clipper")
    clipper_metrics.report_metric("tried_counter", 2)
    with pytest.raises(ClipperException, match="cannot report -1"):
        clipper_metrics.report_metric("tried_counter", -1)  # a counter only goes up
    with pytest.raises(ClipperException, match="cannot report 'many'"):
        clipper_metrics.report_metric("tried_counter", "many")  # type: ignore[arg-type]
