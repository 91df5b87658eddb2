"""The embedded cluster: replica processes, failure detection, restarts and persistence."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.deployers.python import create_endpoint
from tests.conftest import NO_MODELS_EXPLANATION, new_connection, predict, replica_pids, wait_for


def _make_wheel(directory: Path, package: str, source: str) -> Path:
    """A minimal wheel, written by hand so that installing it needs no build tools or network."""
    import zipfile

    dist = f"{package}-1.0.dist-info"
    files = {
        f"{package}/__init__.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    path = directory / f"{package}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def _counter(i: int) -> list[float]:
    # A new input each time, so that no answer comes from the prediction cache.
    return [float(i), 1.0]


def test_a_killed_replica_is_started_again_by_itself(clipper_conn: ClipperConnection) -> None:
    create_endpoint(clipper_conn, "fragile", "doubles", lambda xs: [os.getpid()] * len(xs))
    (pid,) = replica_pids(clipper_conn, "fragile")
    assert predict(clipper_conn, "fragile", {"input": _counter(0)})["output"] == pid
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    queries = iter(range(1, 10_000))
    answers = []

    def answered_by_another() -> bool:
        response = predict(clipper_conn, "fragile", {"input": _counter(next(queries))})
        answers.append(response)
        return response["default"] is False and response["output"] != pid

    wait_for(answered_by_another, 30, "the replica's keeper to start it again")
    # Meanwhile every query was answered: by the default, with the reason, never an error.
    gap = [a["default_explanation"] for a in answers if a["default"]]
    assert set(gap) <= {NO_MODELS_EXPLANATION}, gap
    (successor,) = replica_pids(clipper_conn, "fragile")
    assert answers[-1]["output"] == successor
    assert clipper_conn.get_num_replicas("fragile") == 1

    # A forced stop takes the replica with its keeper: none is left serving.
    process = psutil.Process(successor)
    clipper_conn.stop_all(graceful=False)
    wait_for(lambda: _gone(process), 5, "the replica to stop with its keeper")


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def test_a_replica_stuck_in_predict_is_started_anew(
    clipper_conn: ClipperConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPPER_PREDICT_TIMEOUT_S", "2")  # replicas get this process's env

    def hangs_on_negatives(xs: np.ndarray) -> list[int]:
        import threading

        if (xs < 0).any():
            threading.Event().wait()  # a deadlock: nothing will ever set it
        return [os.getpid()] * len(xs)

    create_endpoint(clipper_conn, "stuck", "doubles", hangs_on_negatives, slo_micros=500_000)
    (pid,) = replica_pids(clipper_conn, "stuck")
    assert predict(clipper_conn, "stuck", {"input": [1.0]})["output"] == pid
    assert predict(clipper_conn, "stuck", {"input": [-1.0]})["default"] is True
    queries = iter(range(2, 10_000))

    def answered_by_another() -> bool:
        response = predict(clipper_conn, "stuck", {"input": [float(next(queries))]})
        return response["default"] is False and response["output"] != pid

    wait_for(answered_by_another, 30, "the stuck replica to be replaced")
    logs = Path(clipper_conn.cm.cluster_dir) / "logs"  # type: ignore[attr-defined]
    text = "".join(log.read_text() for log in logs.glob("stuck_1-*.log"))
    assert "past CLIPPER_PREDICT_TIMEOUT_S" in text
    assert "exited with code 4" in text


def test_scaling_down_stops_replicas_for_good(clipper_conn: ClipperConnection) -> None:
    create_endpoint(clipper_conn, "scaled", "doubles", lambda xs: [0.0] * len(xs), num_replicas=2)
    models = [psutil.Process(pid) for pid in replica_pids(clipper_conn, "scaled")]
    assert len(models) == 2
    clipper_conn.set_num_replicas("scaled", 1)
    (kept,) = replica_pids(clipper_conn, "scaled")
    assert [_gone(m) for m in models] == [m.pid != kept for m in models]
    time.sleep(1.5)  # longer than a keeper waits to start a replica again
    # The stopped replica's keeper did not start it again.
    assert replica_pids(clipper_conn, "scaled") == [kept]
    assert clipper_conn.get_num_replicas("scaled") == 1


def test_replicas_share_the_load(clipper_conn: ClipperConnection) -> None:
    create_endpoint(
        clipper_conn, "pids", "doubles", lambda xs: [os.getpid()] * len(xs), num_replicas=3
    )
    assert clipper_conn.get_num_replicas("pids") == 3
    seen = set()
    for i in range(60):
        seen.add(predict(clipper_conn, "pids", {"input": _counter(i)})["output"])
    assert seen == set(replica_pids(clipper_conn, "pids"))


def test_model_that_raises_fails_only_its_batch(clipper_conn: ClipperConnection) -> None:
    def picky(xs: np.ndarray) -> list[float]:
        if any(x[0] < 0 for x in xs):
            raise ValueError("negative input")
        return [float(x[0]) for x in xs]

    create_endpoint(clipper_conn, "picky", "doubles", picky, default_output="-1")
    bad = predict(clipper_conn, "picky", {"input": [-5.0]})
    assert bad["default"] is True and bad["output"] == -1
    assert "ValueError: negative input" in bad["default_explanation"]
    good = predict(clipper_conn, "picky", {"input": [5.0]})
    assert good == {"query_id": good["query_id"], "output": 5.0, "default": False}
    assert clipper_conn.get_num_replicas("picky") == 1


def test_wrong_number_of_outputs_fails_the_batch(clipper_conn: ClipperConnection) -> None:
    create_endpoint(clipper_conn, "short", "doubles", lambda xs: [1], batch_size=3)
    response = predict(clipper_conn, "short", {"input_batch": [[1.0], [2.0], [3.0]]})
    for p in response["batch_predictions"]:
        assert p["default"] is True
        assert "Expected model to return 3 outputs, found 1 outputs" in p["default_explanation"]


def test_restarting_every_service_loses_nothing(
    start_cluster: Callable[..., ClipperConnection], tmp_path: Path
) -> None:
    conn = start_cluster("persist", tmp_path / "persist")
    create_endpoint(conn, "kept", "doubles", lambda xs: [1] * len(xs), slo_micros=200000)
    conn.register_model("kept", "2", "doubles")
    conn.set_model_version("kept", "1")
    conn.register_application("other", "strings", "x", 1000)
    before = (conn.get_all_apps(verbose=True), conn.get_all_models(verbose=True))

    conn.stop_all()
    assert not any(p.name() == "redis-server" and str(tmp_path) in " ".join(p.cmdline())
                   for p in psutil.process_iter(["name"]))  # fmt: skip
    again = start_cluster("persist", tmp_path / "persist")
    assert (again.get_all_apps(verbose=True), again.get_all_models(verbose=True)) == before
    # The model's replicas were stopped with the cluster; scaling it up serves it again.
    again.set_num_replicas("kept", 1)
    assert predict(again, "kept", {"input": [3.0]})["output"] == 1


def test_build_with_pkgs_to_install_uses_its_own_environment(
    clipper_conn: ClipperConnection, tmp_path: Path
) -> None:
    wheel = _make_wheel(tmp_path, "clipper_test_pkg", "ANSWER = 42\n")

    def uses_pkg(xs: np.ndarray) -> list[int]:
        import clipper_test_pkg  # type: ignore[import-not-found]

        return [clipper_test_pkg.ANSWER] * len(xs)

    create_endpoint(
        clipper_conn, "withpkg", "doubles", uses_pkg,
        pkgs_to_install=["--no-index", str(wheel)],
    )  # fmt: skip
    assert predict(clipper_conn, "withpkg", {"input": [1.0]})["output"] == 42


def test_a_redis_that_cannot_start_fails_start_clipper_at_once_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: bad directive'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    conn = new_connection(tmp_path / "cluster")
    started = time.monotonic()
    with pytest.raises(ClipperException, match=r"(?s)Redis did not start.*FATAL CONFIG FILE"):
        conn.start_clipper()
    # Not restarted by its keeper until start_timeout_s (60 s) ran out: it exited at once.
    assert time.monotonic() - started < 30


def test_missing_package_fails_the_deploy_with_the_cause(
    clipper_conn: ClipperConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A function from a module only this process can import is pickled by reference.
    (tmp_path / "only_here_module.py").write_text("def predict(xs):\n    return [0] * len(xs)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here_module  # type: ignore[import-not-found]

    from clipper_admin.deployers.python import deploy_python_closure

    started = time.monotonic()
    with pytest.raises(ClipperException) as e:
        deploy_python_closure(clipper_conn, "broken", 1, "doubles", only_here_module.predict)
    assert time.monotonic() - started < 30
    assert "only_here_module" in str(e.value)
    assert "pkgs_to_install" in str(e.value)
    assert clipper_conn.cm.get_num_replicas("broken", "1") == 0
    assert clipper_conn.get_all_models() == []


def test_a_function_that_cannot_be_pickled_fails_the_deploy_before_anything_starts(
    clipper_conn: ClipperConnection,
) -> None:
    import threading

    from clipper_admin.deployers.python import deploy_python_closure

    lock = threading.Lock()

    def predict(xs: list[object]) -> list[str]:
        with lock:
            return ["0"] * len(xs)

    with pytest.raises(ClipperException) as e:
        deploy_python_closure(clipper_conn, "unpicklable", 1, "doubles", predict)
    assert str(e.value).startswith("The function cannot be pickled")
    assert "cannot pickle '_thread.lock' object" in str(e.value)
    assert clipper_conn.get_all_models() == []


def test_connect_from_another_process_sees_the_cluster(
    clipper_conn: ClipperConnection, tmp_path: Path
) -> None:
    import subprocess
    import sys

    cluster_dir = clipper_conn.cm.cluster_dir  # type: ignore[attr-defined]
    script = (
        "from clipper_admin import ClipperConnection, LocalContainerManager\n"
        "conn = ClipperConnection(\n"
        f"    LocalContainerManager('test-cluster', cluster_dir={str(cluster_dir)!r}))\n"
        "conn.connect()\n"
        "conn.register_application('from-child', 'doubles', 'd', 100000)\n"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert clipper_conn.get_all_apps() == ["from-child"]
    # The child's connect() found the very cluster this process started.
    other = new_connection(Path(cluster_dir))
    other.connect()
    assert other.get_query_addr() == clipper_conn.get_query_addr()


def _keeper(conn: ClipperConnection, service: str) -> psutil.Process:
    """The keeper of one of the cluster's services: its record names the keeper."""
    cluster_dir = Path(conn.cm.cluster_dir)  # type: ignore[attr-defined]
    record = json.loads((cluster_dir / "processes" / f"{service}.json").read_text())
    return psutil.Process(record["pid"])


def _kill_with_keeper(conn: ClipperConnection, service: str) -> None:
    """As if the service and its keeper both died: nothing starts it again by itself."""
    keeper = _keeper(conn, service)
    os.killpg(keeper.pid, signal.SIGKILL)
    keeper.wait(10)


@pytest.mark.parametrize("service", ["redis", "management", "query_frontend"])
def test_a_killed_service_comes_back_by_itself_on_its_port(
    clipper_conn: ClipperConnection, service: str
) -> None:
    create_endpoint(clipper_conn, "steady", "doubles", lambda xs: [sum(x) for x in xs])
    assert predict(clipper_conn, "steady", {"input": _counter(0)})["output"] == 1.0
    addresses = (clipper_conn.get_query_addr(), clipper_conn.cm.get_admin_addr())
    (process,) = _keeper(clipper_conn, service).children()
    process.kill()  # as the OOM killer would
    process.wait(10)
    queries = iter(range(1, 10_000))

    def serves_again() -> bool:
        try:
            apps = clipper_conn.get_all_apps()
            response = predict(clipper_conn, "steady", {"input": _counter(next(queries))})
        except (ClipperException, requests.ConnectionError):
            return False  # until it is back: the frontend or the admin API is down
        return apps == ["steady"] and response["default"] is False

    wait_for(serves_again, 15, f"{service} to come back")
    (successor,) = _keeper(clipper_conn, service).children()
    assert successor.pid != process.pid
    # On the ports its clients know, with nothing lost; a new app is served.
    assert (clipper_conn.get_query_addr(), clipper_conn.cm.get_admin_addr()) == addresses
    create_endpoint(clipper_conn, "after", "doubles", lambda xs: [len(x) for x in xs])
    assert predict(clipper_conn, "after", {"input": [1.0, 2.0, 3.0]})["output"] == 3


def test_a_redis_killed_with_its_keeper_is_restarted_by_start_clipper_with_nothing_lost(
    clipper_conn: ClipperConnection,
) -> None:
    create_endpoint(clipper_conn, "steady", "doubles", lambda xs: [sum(x) for x in xs])
    # Answered once first: the frontend learns of the replica asynchronously, and can only go
    # on serving what it knew when Redis died.
    assert predict(clipper_conn, "steady", {"input": _counter(0)})["output"] == 1.0
    cluster_dir = Path(clipper_conn.cm.cluster_dir)  # type: ignore[attr-defined]
    _kill_with_keeper(clipper_conn, "redis")

    # Queries go on from the state the frontend holds; admin calls say what is missing.
    assert predict(clipper_conn, "steady", {"input": _counter(1)})["output"] == 2.0
    with pytest.raises(ClipperException, match=r"status code: 503 .*Redis at .* is unreachable"):
        clipper_conn.get_all_apps()
    with pytest.raises(ClipperException, match="is running without redis"):
        new_connection(cluster_dir).connect()

    repair = new_connection(cluster_dir)
    repair.start_clipper()
    assert repair.get_query_addr() == clipper_conn.get_query_addr()
    assert repair.get_all_apps() == ["steady"]
    # Redis came back from its append-only file, with the replica's record if its ttl (30 s)
    # had not run out, or else without it: then the frontend routes to it again once its next
    # heartbeat (every 1 s) writes and announces it.
    wait_for(
        lambda: predict(repair, "steady", {"input": _counter(2)})["output"] == 3.0,
        3.0,
        "the replica to be routed to again",
    )
    # The services that kept running use the new Redis: a new app is served.
    create_endpoint(repair, "after", "doubles", lambda xs: [len(x) for x in xs])
    assert predict(repair, "after", {"input": [1.0, 2.0, 3.0]})["output"] == 3
    with pytest.raises(ClipperException, match="already exists"):
        new_connection(cluster_dir).start_clipper()


def test_a_query_frontend_killed_with_its_keeper_comes_back_on_its_port_to_the_same_replicas(
    clipper_conn: ClipperConnection,
) -> None:
    create_endpoint(clipper_conn, "kept", "doubles", lambda xs: [sum(x) for x in xs])
    replicas = replica_pids(clipper_conn, "kept")
    _kill_with_keeper(clipper_conn, "query_frontend")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"http://{clipper_conn.get_query_addr()}/kept/predict", timeout=5)

    clipper_conn.start_clipper()
    assert predict(clipper_conn, "kept", {"input": _counter(3)})["output"] == 4.0
    assert replica_pids(clipper_conn, "kept") == replicas
