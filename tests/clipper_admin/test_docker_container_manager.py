"""DockerContainerManager and docker-compose against the real Docker engine."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from clipper_admin import (
    ClipperConnection,
    ClipperException,
    DockerContainerManager,
    LocalContainerManager,
)
from clipper_admin.container_manager import CLIPPER_DOCKER_LABEL, CLIPPER_MODEL_CONTAINER_LABEL
from clipper_admin.deployers.python import create_endpoint, deploy_python_closure
from tests.conftest import NO_MODELS_EXPLANATION, predict, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("docker_engine")


def _docker_manager(name: str, **manager_args: Any) -> DockerContainerManager:
    return DockerContainerManager(
        cluster_name=name,
        clipper_query_port=0,
        clipper_management_port=0,
        redis_port=0,
        prometheus_port=0,
        **manager_args,
    )


def _running(cluster: str, **labels: str) -> list[Any]:
    filters = [f"{CLIPPER_DOCKER_LABEL}={cluster}"] + [f"{k}={v}" for k, v in labels.items()]
    return list(docker.from_env().containers.list(filters={"label": filters}))


@pytest.fixture
def docker_clusters() -> Iterator[Callable[..., ClipperConnection]]:
    started: list[ClipperConnection] = []

    def start(
        name: str, manager_args: dict[str, Any] | None = None, **start_clipper_args: Any
    ) -> ClipperConnection:
        conn = ClipperConnection(_docker_manager(name, **(manager_args or {})))
        started.append(conn)
        conn.start_clipper(**start_clipper_args)
        return conn

    yield start
    for conn in started:
        conn.stop_all(graceful=False)
        conn.cm.remove_state()  # type: ignore[attr-defined]


def _client_script(conn: ClipperConnection) -> dict[str, Any]:
    """What a user writes, whichever container manager the connection was made with."""

    def shout(xs: Any) -> list[str]:
        import inflection  # type: ignore[import-not-found]  # from pkgs_to_install

        return [inflection.camelize(x.decode()) for x in xs]

    conn.register_application("names", "strings", "unknown", 3000000)
    deploy_python_closure(conn, "names", 1, "strings", shout, pkgs_to_install=["inflection==0.5.1"])
    conn.link_model_to_app("names", "names")
    answer = predict(conn, "names", {"input": "device_type"})
    conn.set_num_replicas("names", 3)
    three = conn.get_num_replicas("names")
    conn.set_num_replicas("names", 1)
    one = conn.get_num_replicas("names")
    after_scaling = predict(conn, "names", {"input": "model_version"})
    conn.stop_models(["names"])
    return {
        "answer": answer["output"],
        "replicas": (three, one),
        "after_scaling": after_scaling["output"],
        "models_left": conn.get_all_models(),
    }


@pytest.mark.parametrize("manager", ["local", "docker"])
def test_the_same_client_script_runs_with_either_manager(manager: str, tmp_path: Path) -> None:
    name = f"same-{manager}-{uuid.uuid4().hex[:6]}"
    docker_cm = _docker_manager(name) if manager == "docker" else None
    cm = docker_cm or LocalContainerManager(
        name, str(tmp_path), clipper_query_port=0, clipper_management_port=0, redis_port=0
    )
    conn = ClipperConnection(cm)
    conn.start_clipper()
    try:
        result = _client_script(conn)
        # Clipper lost its state at stop_all(), so a script run again registers everything
        # again: against the kept state, the same registrations must succeed.
        conn.stop_all()
        conn.start_clipper()
        again = _client_script(conn)
    finally:
        conn.stop_all(graceful=False)
        if docker_cm is not None:
            docker_cm.remove_state()
    if docker_cm is not None:
        tags = [t for i in docker.from_env().images.list() for t in i.tags]
        assert not [t for t in tags if t.startswith(f"{name}-")], "remove_state left model images"
    expected = {
        "answer": "DeviceType",
        "replicas": (3, 1),
        "after_scaling": "ModelVersion",
        "models_left": [],
    }
    assert result == expected and again == expected


def test_containers_follow_the_replica_count(
    docker_clusters: Callable[..., ClipperConnection],
) -> None:
    name = f"scale-{uuid.uuid4().hex[:6]}"
    env = {"environment": {"CLIPPER_PREDICT_TIMEOUT_S": "60"}}
    conn = docker_clusters(name, {"extra_container_kwargs": env}, num_frontend_replicas=2)
    services = _running(name)
    assert len(services) == 4  # redis, management, query frontend, prometheus
    # The frontend container runs a supervisor and 2 workers sharing the port.
    (frontend,) = [c for c in services if "query_frontend" in c.image.tags[0]]
    assert sum("query_frontend" in " ".join(p) for p in frontend.top()["Processes"]) == 3
    create_endpoint(conn, "echo", "doubles", lambda xs: [x[0] for x in xs], num_replicas=2)
    model_label = {"ai.clipper.model_container.label": "echo_1"}
    assert len(_running(name, **model_label)) == 2
    for replica in _running(name, **model_label):
        variables = replica.attrs["Config"]["Env"]
        assert "CLIPPER_PREDICT_TIMEOUT_S=60" in variables  # the user's, beside the cluster's
        assert "CLIPPER_MODEL_NAME=echo" in variables
    conn.set_num_replicas("echo", 4)
    assert len(_running(name, **model_label)) == 4
    wait_for(lambda: len(conn.get_all_model_replicas()) == 4, 10, "4 registered replicas")
    conn.set_num_replicas("echo", 1)
    assert len(_running(name, **model_label)) == 1
    for i in range(20):
        assert predict(conn, "echo", {"input": [float(i)]})["output"] == float(i)
    # Whichever worker answers, /metrics counts every worker's queries.
    metrics = requests.get(f"http://{conn.get_query_addr()}/metrics", timeout=10).json()
    counts = {k: v["count"] for entry in metrics["counters"] for k, v in entry.items()}
    assert counts["app:echo:num_predictions"] == "20"
    logs = conn.get_clipper_logs(str(Path(os.environ.get("TMPDIR", "/tmp")) / f"logs-{name}"))
    assert len(logs) == 5
    # The image's frontend runs its per-query modules compiled (the Dockerfile's native stage).
    all_logs = "".join(Path(p).read_text() for p in logs)
    assert "compiled modules: arrival, batching, cache, codec" in all_logs
    assert "compiled modules: none" not in all_logs
    conn.stop_all_model_containers()
    assert _running(name, **model_label) == []
    assert conn.get_all_models() == []


def test_two_clusters_side_by_side_are_isolated(
    docker_clusters: Callable[..., ClipperConnection],
) -> None:
    first = docker_clusters(f"tenant-a-{uuid.uuid4().hex[:6]}")
    second = docker_clusters(f"tenant-b-{uuid.uuid4().hex[:6]}")
    for i, conn in enumerate((first, second)):
        create_endpoint(conn, "testapp0-model", "doubles", lambda xs, i=i: [i] * len(xs))
    assert predict(first, "testapp0-model", {"input": [1.0]})["output"] == 0
    assert predict(second, "testapp0-model", {"input": [1.0]})["output"] == 1
    assert first.get_query_addr() != second.get_query_addr()
    first.stop_all()
    assert predict(second, "testapp0-model", {"input": [2.0]})["output"] == 1
    assert _running(first.cm.cluster_name) == []


def test_a_kept_version_is_deployed_again_with_new_code_after_stop_all(
    docker_clusters: Callable[..., ClipperConnection],
) -> None:
    conn = docker_clusters(f"rerun-{uuid.uuid4().hex[:6]}")
    for answer in ("first", "second"):
        # What a Clipper script does on each run: the version's image is built again under the
        # same tag, and its record, kept in Redis's volume, is the same.
        create_endpoint(conn, "rerun", "doubles", lambda xs, a=answer: [a] * len(xs))
        assert predict(conn, "rerun", {"input": [1.0]})["output"] == answer
        conn.stop_all()
        conn.start_clipper()
    assert conn.get_all_models() == ["rerun:1"]


def test_an_image_built_again_under_its_tag_replaces_the_old_one(tmp_path: Path) -> None:
    cm = _docker_manager(f"rebuild-{uuid.uuid4().hex[:6]}")
    engine = docker.from_env()
    model = tmp_path / "model"
    model.mkdir()

    def build(weights: str) -> Any:
        (model / "weights.txt").write_text(weights)
        return engine.images.get(cm.build_model("m", "1", str(model), "python:3.11-slim"))

    try:
        first = build("first")
        second = build("second")
        # Deleted, or every redeploy of a version (and every upgrade) would leak an image.
        with pytest.raises(docker.errors.ImageNotFound):
            engine.images.get(first.id)
        # An image a container still uses is not deleted under it.
        container = engine.containers.create(second.id, command="true")
        try:
            third = build("third")
            assert engine.images.get(second.id).id == second.id
        finally:
            container.remove(force=True)
            engine.images.remove(second.id)
        assert third.id != second.id
    finally:
        cm.remove_state()


def test_a_container_that_crashes_at_start_fails_the_deploy_with_its_log(
    docker_clusters: Callable[..., ClipperConnection],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = docker_clusters(f"crash-{uuid.uuid4().hex[:6]}")
    (tmp_path / "host_only_module.py").write_text("def predict(xs):\n    return xs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import host_only_module  # type: ignore[import-not-found]

    started = time.monotonic()
    with pytest.raises(ClipperException) as e:
        deploy_python_closure(conn, "crashy", 1, "doubles", host_only_module.predict)
    assert time.monotonic() - started < 60
    assert "exited before it was ready" in e.value.msg
    assert "No module named 'host_only_module'" in e.value.msg
    assert "pkgs_to_install" in e.value.msg
    assert conn.cm.get_num_replicas("crashy", "1") == 0
    assert conn.get_all_models() == []


def test_a_base_image_that_cannot_load_the_closure_fails_at_once(
    docker_clusters: Callable[..., ClipperConnection],
) -> None:
    conn = docker_clusters(f"skew-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ClipperException) as e:
        deploy_python_closure(
            conn, "skewed", 1, "doubles", lambda xs: xs, base_image="python:3.11-slim"
        )
    assert "cloudpickle none" in e.value.msg
    assert "base_image='default'" in e.value.msg


def _compose(*args: str, env: dict[str, str], override: Path) -> subprocess.CompletedProcess[str]:
    files = ["-f", "docker-compose.yml", "-f", str(override)]
    return subprocess.run(
        ["docker", "compose", "-p", env["CLIPPER_CLUSTER_NAME"], *files, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_compose_cluster_serves_models_and_prometheus_sees_them(tmp_path: Path) -> None:
    from clipper_admin.container_manager import find_unbound_port

    env = {
        "CLIPPER_CLUSTER_NAME": f"compose-{uuid.uuid4().hex[:6]}",
        "CLIPPER_QUERY_PORT": str(find_unbound_port()),
        "CLIPPER_MANAGEMENT_PORT": str(find_unbound_port()),
        "CLIPPER_REDIS_PORT": str(find_unbound_port()),
        "CLIPPER_PROMETHEUS_PORT": str(find_unbound_port()),
    }
    # Images of the test's own, removed after it: built under the file's tags, they would
    # untag the images DockerContainerManager built there, and leave them on the disk.
    override = tmp_path / "images.yml"
    services = ("redis", "management", "query-frontend", "prometheus")
    override.write_text(
        "services:\n"
        + "".join(
            f"  {s}: {{image: 'clipper-test/{s}:{env['CLIPPER_CLUSTER_NAME']}'}}\n"
            for s in services
        )
    )
    up = _compose("up", "-d", "--build", env=env, override=override)
    assert up.returncode == 0, up.stderr[-3000:]
    conn = ClipperConnection(DockerContainerManager(cluster_name=env["CLIPPER_CLUSTER_NAME"]))
    try:
        conn.connect()
        wait_for(_admin_ready(conn), 60, "the management service")

        def lengths(xs: list[Any]) -> list[int]:
            import clipper_admin.metrics as metrics

            metrics.add_metric("composed_inputs", "Counter", "Inputs the model was given")
            metrics.report_metric("composed_inputs", len(xs))
            return [len(x) for x in xs]

        create_endpoint(conn, "composed", "doubles", lengths)
        assert predict(conn, "composed", {"input": [1.0, 2.0, 3.0]})["output"] == 3

        def targets_up() -> bool:
            url = f"http://{conn.get_metric_addr()}/api/v1/targets"
            try:
                active = requests.get(url, timeout=5).json()["data"]["activeTargets"]
            except (requests.RequestException, ValueError, KeyError):
                return False
            jobs = sorted(t["scrapePool"] for t in active if t["health"] == "up")
            return jobs == ["model-containers", "query-frontend"]

        wait_for(targets_up, 60, "Prometheus to scrape the frontend and the model container")

        def scraped(metric: str) -> Callable[[], bool]:
            def found() -> bool:
                series = requests.get(
                    f"http://{conn.get_metric_addr()}/api/v1/query",
                    params={"query": metric},
                    timeout=5,
                ).json()
                assert series["status"] == "success"
                return [float(s["value"][1]) for s in series["data"]["result"]] == [1.0]

            return found

        # The replica's own, and the one the model's code added (clipper_admin.metrics).
        wait_for(scraped("clipper_mc_pred_total"), 30, "Prometheus to scrape the prediction")
        wait_for(scraped("composed_inputs_total"), 30, "Prometheus to scrape the model's metric")
    finally:
        conn.stop_all_model_containers()
        down = _compose("down", "-v", "--rmi", "all", env=env, override=override)
        conn.cm.remove_state()  # type: ignore[attr-defined]
        assert down.returncode == 0, down.stderr


def _admin_ready(conn: ClipperConnection) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            url = f"http://{conn.cm.get_admin_addr()}/admin/ping"
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    return ready


def test_pytorch_and_onnx_models_in_their_images(
    docker_clusters: Callable[..., ClipperConnection], tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime
    import torch
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from clipper_admin.deployers import onnx as onnx_deployer
    from clipper_admin.deployers import pytorch as pytorch_deployer

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    # Containers limited to one CPU (`docker run --cpus 1`), on a machine with more cores.
    one_cpu = {"extra_container_kwargs": {"nano_cpus": 10**9}}
    conn = docker_clusters(f"frameworks-{uuid.uuid4().hex[:6]}", manager_args=one_cpu)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))

    def func(model: Any, inputs: Any) -> list[int]:
        return model(torch.from_numpy(np.asarray(inputs, dtype=np.float32))).argmax(1).tolist()

    pytorch_deployer.create_endpoint(conn, "pt", "floats", func, net)
    classifier = LogisticRegression(max_iter=300).fit(x, data.target)
    onnx_deployer.create_endpoint(conn, "sk", "floats", classifier)

    served_pt = predict(conn, "pt", {"input_batch": x[:20].tolist()})["batch_predictions"]
    with torch.inference_mode():
        assert [p["output"] for p in served_pt] == net(torch.from_numpy(x[:20])).argmax(1).tolist()
    served_sk = predict(conn, "sk", {"input_batch": x[:20].tolist()})["batch_predictions"]
    graph, _ = onnx_deployer.sklearn_to_onnx(classifier)
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    direct = session.run(["label"], {session.get_inputs()[0].name: x[:20]})[0].tolist()
    assert [p["output"] for p in served_sk] == direct
    # Identical model files build identical images, so an image may carry other clusters' tags.
    images = {
        t.split(":")[0] for c in _running(conn.cm.cluster_name) if c.image for t in c.image.tags
    }
    assert {f"{conn.cm.cluster_name}-pt", f"{conn.cm.cluster_name}-sk"} <= images
    # Each framework runs one thread per CPU the quota allows, not one per core it can see.
    logs = "".join(Path(p).read_text() for p in conn.get_clipper_logs(str(tmp_path / "logs")))
    assert "PyTorch with 1 intra-op threads" in logs
    assert "onnxruntime with 1 intra-op threads" in logs


def _kill_main_process(container: Any) -> None:
    """SIGKILL from the host, as a crash or the kernel's OOM killer would: not `docker kill`,
    which Docker counts as stopping the container on purpose."""
    container.reload()
    os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)


def test_a_killed_replica_or_redis_container_comes_back_by_itself(
    docker_clusters: Callable[..., ClipperConnection],
) -> None:
    cluster = f"phoenix-{uuid.uuid4().hex[:6]}"
    conn = docker_clusters(cluster)
    create_endpoint(conn, "phoenix", "doubles", lambda xs: [len(x) for x in xs])
    assert predict(conn, "phoenix", {"input": [1.0, 2.0]})["output"] == 2

    (replica,) = _running(cluster, **{CLIPPER_MODEL_CONTAINER_LABEL: "phoenix_1"})
    _kill_main_process(replica)
    queries = iter(range(3, 10_000))
    answers = []

    def answered() -> bool:
        response = predict(conn, "phoenix", {"input": [1.0] * next(queries)})
        answers.append(response)
        return response["default"] is False

    wait_for(answered, 60, "the killed replica to be restarted and serve again")
    # Until then every query got the default with the reason, at once: none was held for its
    # SLO by a batch written to the dead replica's stream.
    gap = [a["default_explanation"] for a in answers if a["default"]]
    assert set(gap) <= {NO_MODELS_EXPLANATION}, gap
    replica.reload()
    assert replica.attrs["RestartCount"] >= 1
    assert conn.cm.get_num_replicas("phoenix", "1") == 1

    (redis,) = [c for c in _running(cluster) if c.name.startswith("redis-")]
    _kill_main_process(redis)
    # Back from its volume's append-only file: the services that kept running use it again.
    wait_for(lambda: _apps_or_none(conn) == ["phoenix"], 60, "Redis to be restarted")
    create_endpoint(conn, "after", "doubles", lambda xs: [sum(x) for x in xs])
    assert predict(conn, "after", {"input": [1.0, 2.0]})["output"] == 3.0


def _apps_or_none(conn: ClipperConnection) -> list[str] | None:
    try:
        return list(conn.get_all_apps())
    except ClipperException:
        return None
