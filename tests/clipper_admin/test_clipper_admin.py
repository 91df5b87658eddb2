"""Clipper's own admin and query integration tests (spec 9.1, 9.2), against a real local cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from clipper_admin import ClipperConnection, ClipperException, UnconnectedException
from clipper_admin.deployers.python import create_endpoint, deploy_python_closure
from tests.conftest import NO_MODELS_EXPLANATION, new_connection, predict, wait_for

SLO_EXPLANATION = "Failed to retrieve a prediction response within the specified latency SLO"


def test_register_model_correct(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_model("m", "v1", "doubles")
    assert clipper_conn.get_model_info("m", "v1") is not None
    clipper_conn.register_model("m", "v2", "doubles")
    info = clipper_conn.get_model_info("m", "v2")
    assert info is not None and info["is_current_version"]
    assert clipper_conn.get_current_model_version("m") == "v2"


def test_register_application_correct(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("testapp", "doubles", "DEFAULT", 100000)
    assert "testapp" in clipper_conn.get_all_apps()
    assert clipper_conn.get_all_apps(verbose=True) == [
        {
            "input_type": "doubles",
            "default_output": "DEFAULT",
            "latency_slo_micros": 100000,
            "name": "testapp",
            "linked_models": [],
        }
    ]


def test_link_not_registered_model_to_app_fails(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("testapp", "doubles", "DEFAULT", 100000)
    with pytest.raises(ClipperException) as e:
        clipper_conn.link_model_to_app("testapp", "not-registered")
    assert "No model with name" in str(e.value)
    assert "Received error status code: 400" in e.value.msg


def test_unregister_application_correct(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("testapp", "doubles", "DEFAULT", 100000)
    clipper_conn.unregister_application("testapp")
    assert clipper_conn.get_all_apps() == []


def test_links(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("testapp", "doubles", "DEFAULT", 100000)
    assert clipper_conn.get_linked_models("testapp") == []
    clipper_conn.register_model("m", "v1", "doubles")
    clipper_conn.link_model_to_app("testapp", "m")
    assert clipper_conn.get_linked_models("testapp") == ["m"]
    info = clipper_conn.get_app_info("testapp")
    assert info is not None and info["linked_models"] == ["m"]
    clipper_conn.unlink_model_from_app("testapp", "m")
    assert clipper_conn.get_linked_models("testapp") == []


def test_get_app_info_for_nonexistent_app_returns_none(clipper_conn: ClipperConnection) -> None:
    assert clipper_conn.get_app_info("nonexistent") is None


def test_set_num_replicas_for_external_model_fails(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_model("m", "1", "doubles")
    with pytest.raises(ClipperException) as e:
        clipper_conn.set_num_replicas("m", 1, "1")
    assert "containerless model" in str(e.value)


def test_model_version_sets_correctly(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_model("m", "v1", "doubles")
    clipper_conn.register_model("m", "v2", "doubles")
    clipper_conn.set_model_version("m", "v1")
    models = {m["model_version"]: m for m in clipper_conn.get_all_models(verbose=True)}
    assert models["v1"]["is_current_version"] and not models["v2"]["is_current_version"]


def test_get_logs_creates_log_files(clipper_conn: ClipperConnection, tmp_path: Path) -> None:
    create_endpoint(clipper_conn, "logged", "doubles", lambda xs: [1] * len(xs))
    paths = clipper_conn.get_clipper_logs(str(tmp_path / "logs"))
    names = {Path(p).name for p in paths}
    assert {"redis.log", "management.log", "query_frontend.log"} <= names
    assert any(name.startswith("logged_1-") for name in names)
    assert all(Path(p).stat().st_size > 0 for p in paths if not p.endswith("redis.log"))


def test_inspect_instance_returns_json_dict(clipper_conn: ClipperConnection) -> None:
    metrics = clipper_conn.inspect_instance()
    assert set(metrics) == {"counters", "ratio_counters", "meters", "histograms"}


def test_unconnected_calls_raise(tmp_path: Path) -> None:
    from tests.conftest import new_connection

    conn = new_connection(tmp_path / "never-started")
    with pytest.raises(UnconnectedException):
        conn.get_all_apps()
    with pytest.raises(ClipperException, match="No running Clipper cluster"):
        conn.connect()


def test_invalid_model_names_are_rejected(clipper_conn: ClipperConnection) -> None:
    for name, version in (("Bad_Name", "1"), ("ok", "1.0")):
        with pytest.raises(ClipperException, match="DNS-1123"):
            deploy_python_closure(clipper_conn, name, version, "doubles", lambda xs: xs)


def test_a_wrong_input_type_or_replica_count_fails_before_anything_starts(
    clipper_conn: ClipperConnection,
) -> None:
    with pytest.raises(ClipperException, match=r"^Invalid input type 'tensors'\. Accepted"):
        deploy_python_closure(clipper_conn, "m", 1, "tensors", lambda xs: xs)
    with pytest.raises(ClipperException, match=r"^num_replicas must be .*: -1$"):
        deploy_python_closure(clipper_conn, "m", 1, "doubles", lambda xs: xs, num_replicas=-1)
    assert clipper_conn.get_all_models() == []
    assert clipper_conn.cm.get_num_replicas("m", "1") == 0
    deploy_python_closure(clipper_conn, "m", 1, "doubles", lambda xs: [1] * len(xs))
    with pytest.raises(ClipperException, match=r"^num_replicas must be .*: -2$"):
        clipper_conn.set_num_replicas("m", -2)
    assert clipper_conn.get_num_replicas("m") == 1


def test_set_num_replicas_for_deployed_model_succeeds(clipper_conn: ClipperConnection) -> None:
    deploy_python_closure(clipper_conn, "m", 1, "doubles", lambda xs: [1] * len(xs))
    clipper_conn.set_num_replicas("m", 4)
    assert clipper_conn.get_num_replicas("m") == 4
    assert len(clipper_conn.get_all_model_replicas()) == 4
    clipper_conn.set_num_replicas("m", 2)
    assert clipper_conn.get_num_replicas("m") == 2
    wait_for(lambda: len(clipper_conn.get_all_model_replicas()) == 2, 5, "replicas to deregister")
    replica = clipper_conn.get_all_model_replicas(verbose=True)[0]
    info = clipper_conn.get_model_replica_info("m", "1", replica["model_replica_id"])
    assert info == replica


def test_test_predict_function(clipper_conn: ClipperConnection) -> None:
    def predict_func(xs: np.ndarray) -> list[float]:
        return [float(sum(x)) for x in xs]

    create_endpoint(
        clipper_conn, "hello-world", "doubles", predict_func, default_output="-1.0",
        slo_micros=100000,
    )  # fmt: skip
    query = {"input": [1.1, 2.2, 3.3]}
    response = predict(clipper_conn, "hello-world", query, slash=True)
    assert not response["default"], response
    assert [response["output"]] == clipper_conn.test_predict_function(
        query, predict_func, "doubles"
    )
    batch = {"input_batch": [[1.1, 2.2, 3.3], [7.7, 8.8, 9.9]]}
    response = predict(clipper_conn, "hello-world", batch, slash=True)
    assert [p["output"] for p in response["batch_predictions"]] == (
        clipper_conn.test_predict_function(batch, predict_func, "doubles")
    )
    assert clipper_conn.test_predict_function({"input": ["a"]}, predict_func, "doubles") == (
        "Invalid input type"
    )


def test_query_specific_model_version(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("testapp", "doubles", "DEFAULT", 3000000)
    deploy_python_closure(clipper_conn, "testmodel", "v1", "doubles", lambda xs: ["1"] * len(xs))
    clipper_conn.link_model_to_app("testapp", "testmodel")
    deploy_python_closure(clipper_conn, "testmodel", "v2", "doubles", lambda xs: ["2"] * len(xs))
    assert predict(clipper_conn, "testapp", {"input": [1.0], "version": "v1"})["output"] == 1
    assert predict(clipper_conn, "testapp", {"input": [1.0]})["output"] == 2
    response = requests.post(
        f"http://{clipper_conn.get_query_addr()}/testapp/predict",
        json={"input": [1.0], "version": "nonexistent"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "Query processing error",
        "cause": "Requested version: nonexistent does not exist for model: testmodel",
    }


def test_a_staged_version_serves_only_queries_that_name_it_until_it_is_made_current(
    clipper_conn: ClipperConnection,
) -> None:
    clipper_conn.register_application("staged", "doubles", "DEFAULT", 3000000)
    deploy_python_closure(clipper_conn, "blue-green", "1", "doubles", lambda xs: ["1"] * len(xs))
    clipper_conn.link_model_to_app("staged", "blue-green")
    deploy_python_closure(
        clipper_conn, "blue-green", "2", "doubles", lambda xs: ["2"] * len(xs), make_current=False
    )
    assert clipper_conn.get_current_model_version("blue-green") == "1"
    assert clipper_conn.get_num_replicas("blue-green", "2") == 1
    assert predict(clipper_conn, "staged", {"input": [1.0]})["output"] == 1
    assert predict(clipper_conn, "staged", {"input": [2.0], "version": "2"})["output"] == 2
    clipper_conn.set_model_version("blue-green", "2")
    assert predict(clipper_conn, "staged", {"input": [3.0]})["output"] == 2


@pytest.mark.parametrize("frontend_workers", [1, 2])
def test_the_query_right_after_a_version_switch_or_deploy_goes_to_the_new_version(
    tmp_path: Path, frontend_workers: int
) -> None:
    # Frontends learn of changes from a Redis event: until the management service waited for
    # them, the query sent right after set_model_version went to the old version 58 times in 60.
    conn = new_connection(tmp_path / "switch", "switch")
    try:
        conn.start_clipper(num_frontend_replicas=frontend_workers)
        conn.register_application("switch", "doubles", "DEFAULT", 3000000)
        for version in ("1", "2"):
            deploy_python_closure(
                conn, "switched", version, "doubles", lambda xs, v=version: [v] * len(xs)
            )
        conn.link_model_to_app("switch", "switched")
        for i in range(20):
            version = "1" if i % 2 == 0 else "2"
            conn.set_model_version("switched", version)
            # Several queries, on connections of their own: any frontend worker may take each.
            for j in range(frontend_workers):
                query = {"input": [float(i * frontend_workers + j)]}
                assert predict(conn, "switch", query)["output"] == int(version), (i, j)
        deploy_python_closure(conn, "switched", "3", "doubles", lambda xs: ["3"] * len(xs))
        assert predict(conn, "switch", {"input": [-1.0]})["output"] == 3
        conn.unlink_model_from_app("switch", "switched")
        assert predict(conn, "switch", {"input": [-2.0]})["default"] is True
    finally:
        conn.stop_all(graceful=False)


def test_unlinked_app_returns_default_predictions(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("app3", "doubles", "DEFAULT", 3000000)
    response = predict(clipper_conn, "app3", {"input": [1.1, 2.2]})
    assert response["output"] == "DEFAULT"
    assert response["default"] is True
    assert response["default_explanation"] == NO_MODELS_EXPLANATION


def test_deployed_python_closure_and_batch_queries(clipper_conn: ClipperConnection) -> None:
    clipper_conn.register_application("app5", "doubles", "DEFAULT", 3000000)
    deploy_python_closure(clipper_conn, "len-model", 1, "doubles", lambda xs: [len(x) for x in xs])
    clipper_conn.link_model_to_app("app5", "len-model")
    response = predict(clipper_conn, "app5", {"input": [101.1, 99.5, 107.2]})
    assert response["default"] is False and int(response["output"]) == 3
    batch = predict(clipper_conn, "app5", {"input_batch": [[1.0], [1.0, 2.0], [3.0], [4.0, 5, 6]]})
    assert [p["output"] for p in batch["batch_predictions"]] == [1, 2, 1, 3]
    assert all(p["default"] is False for p in batch["batch_predictions"])
    single = predict(clipper_conn, "app5", {"input_batch": [[9.0, 9.0]]})
    assert single["output"] == 2 and "batch_predictions" not in single


def test_fixed_batch_size_is_reached_when_saturated(clipper_conn: ClipperConnection) -> None:
    def predict_func(inputs: np.ndarray) -> list[str]:
        time.sleep(0.5)
        return [str(len(inputs)) for _ in inputs]

    clipper_conn.register_application("app7", "doubles", "DEFAULT", 30000000)
    deploy_python_closure(clipper_conn, "sleepy", 1, "doubles", predict_func, batch_size=9)
    clipper_conn.link_model_to_app("app7", "sleepy")
    test_input = [[float(x) + (j * 0.001) for x in range(5)] for j in range(9 * 50)]
    response = predict(clipper_conn, "app7", {"input_batch": test_input})
    outputs = [p["output"] for p in response["batch_predictions"]]
    assert len(outputs) == 450
    assert max(outputs) == 9
    assert outputs.count(9) / len(outputs) >= 0.7


def test_slo_expiry_returns_default_with_explanation(clipper_conn: ClipperConnection) -> None:
    def slow(xs: np.ndarray) -> list[str]:
        time.sleep(1.0)
        return ["late"] * len(xs)

    create_endpoint(clipper_conn, "slow", "doubles", slow, default_output="-1.0", slo_micros=100000)
    started = time.monotonic()
    response = predict(clipper_conn, "slow", {"input": [1.0]})
    assert time.monotonic() - started < 0.9
    assert response["output"] == -1.0
    assert response["default"] is True
    assert response["default_explanation"] == SLO_EXPLANATION


def test_stop_calls(clipper_conn: ClipperConnection) -> None:
    for name in ("ma", "mb"):
        for version in ("1", "2"):
            deploy_python_closure(
                clipper_conn, name, version, "doubles", lambda xs: xs, num_replicas=2
            )
    assert len(clipper_conn.get_all_model_replicas()) == 8

    clipper_conn.stop_inactive_model_versions(["ma"])
    assert sorted(clipper_conn.get_all_models()) == ["ma:2", "mb:1", "mb:2"]
    assert clipper_conn.cm.get_num_replicas("ma", "1") == 0
    assert clipper_conn.get_num_replicas("ma", "2") == 2

    clipper_conn.stop_versioned_models({"mb": ["1"]})
    assert sorted(clipper_conn.get_all_models()) == ["ma:2", "mb:2"]

    clipper_conn.stop_models(["ma"])
    assert clipper_conn.get_all_models() == ["mb:2"]

    clipper_conn.stop_all_model_containers()
    assert clipper_conn.get_all_models() == []
    assert clipper_conn.cm.get_num_replicas("mb", "2") == 0
    wait_for(lambda: clipper_conn.get_all_model_replicas() == [], 5, "replicas to deregister")


def test_start_twice_refuses_and_connect_reattaches(
    start_cluster: Callable[..., ClipperConnection], tmp_path: Path
) -> None:
    from tests.conftest import new_connection

    conn = start_cluster("twice", tmp_path / "twice")
    conn.register_application("kept", "doubles", "d", 100000)
    with pytest.raises(ClipperException, match="already exists"):
        new_connection(tmp_path / "twice", "twice").start_clipper()
    other = new_connection(tmp_path / "twice", "twice")
    other.connect()
    assert other.get_all_apps() == ["kept"]
    assert other.get_query_addr() == conn.get_query_addr()


def test_a_clipper_script_runs_again_after_stop_all(
    start_cluster: Callable[..., ClipperConnection], tmp_path: Path
) -> None:
    """Clipper lost its state at stop_all(), so its scripts register everything on every run.
    Against the kept state the same registrations are no-ops, and the stopped version is
    deployed again with the code given now."""

    def quickstart(offset: float) -> dict[str, object]:
        conn = start_cluster("rerun", tmp_path / "rerun")
        conn.register_application("hello-world", "doubles", "-1.0", 1000000)
        deploy_python_closure(
            conn, "sum-model", 1, "doubles", lambda xs: [sum(x) + offset for x in xs]
        )
        conn.link_model_to_app("hello-world", "sum-model")
        answer: dict[str, object] = predict(conn, "hello-world", {"input": [1.0, 2.0]})
        conn.stop_all()
        return answer

    assert quickstart(0.0)["output"] == 3.0
    again = quickstart(10.0)
    assert again["output"] == 13.0 and again["default"] is False


def test_a_served_version_is_not_deployed_again(clipper_conn: ClipperConnection) -> None:
    create_endpoint(clipper_conn, "once", "doubles", lambda xs: [1.0] * len(xs))
    with pytest.raises(
        ClipperException,
        match=r"model with name 'once' and version '1' already exists and 1 replica\(s\) serve",
    ):
        deploy_python_closure(clipper_conn, "once", 1, "doubles", lambda xs: [2.0] * len(xs))
    assert predict(clipper_conn, "once", {"input": [0.5]})["output"] == 1.0
    with pytest.raises(ClipperException, match="already exists with input_type 'doubles'"):
        clipper_conn.register_application("once", "strings", "x", 100000)
