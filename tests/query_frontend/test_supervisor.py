"""Several frontend worker processes on one port: shared load, merged metrics, restarts."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psutil
import requests

from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers.python import create_endpoint
from tests.conftest import wait_for


def _counters(conn: ClipperConnection) -> dict[str, int]:
    metrics = requests.get(f"http://{conn.get_query_addr()}/metrics", timeout=10).json()
    return {name: int(v["count"]) for entry in metrics["counters"] for name, v in entry.items()}


def _workers(conn: ClipperConnection) -> list[psutil.Process]:
    """The worker processes serving the query port: of the processes holding its listening
    sockets, those whose parent (the supervisor) holds them too."""
    query_port = int(conn.get_query_addr().rsplit(":", 1)[1])
    holders = []
    for process in psutil.process_iter():
        try:
            sockets = process.net_connections("tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == query_port for c in sockets):
            holders.append(process)
    pids = {p.pid for p in holders}
    return [p for p in holders if p.ppid() in pids]


def _predict_on_new_connection(conn: ClipperConnection, x: float) -> Any:
    # A new connection each time, so that the kernel spreads them over the workers.
    response = requests.post(
        f"http://{conn.get_query_addr()}/sum/predict",
        data=json.dumps({"input": [x, 1.0]}),
        headers={"Connection": "close"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_frontend_replicas_share_the_port_and_report_metrics_together(tmp_path: Path) -> None:
    cm = LocalContainerManager(
        "workers", str(tmp_path), clipper_query_port=0, clipper_management_port=0, redis_port=0
    )
    conn = ClipperConnection(cm)
    conn.start_clipper(num_frontend_replicas=3)
    try:
        workers = _workers(conn)
        assert len(workers) == 3
        cpu_before = {w.pid: sum(w.cpu_times()[:2]) for w in workers}
        create_endpoint(conn, "sum", "doubles", lambda xs: [sum(x) for x in xs])
        answers = [_predict_on_new_connection(conn, float(i)) for i in range(300)]
        assert [a["output"] for a in answers] == [i + 1.0 for i in range(300)]
        assert not any(a["default"] for a in answers)
        # Every worker took part, and whichever answers /metrics counts all of them.
        busy = [w for w in workers if sum(w.cpu_times()[:2]) - cpu_before[w.pid] > 0.03]
        assert len(busy) == 3
        for _ in range(5):
            assert _counters(conn)["app:sum:num_predictions"] == 300

        # A worker that dies is replaced; the port keeps answering meanwhile.
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        for i in range(30):
            assert _predict_on_new_connection(conn, float(i))["output"] == i + 1.0
        wait_for(lambda: len(_workers(conn)) == 3, 30, "the dead worker's replacement")
        assert victim.pid not in {w.pid for w in _workers(conn)}
    finally:
        conn.stop_all()
    # Stopping the supervisor stopped every worker.
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    cm = LocalContainerManager(
        "orphans", str(tmp_path), clipper_query_port=0, clipper_management_port=0, redis_port=0
    )
    conn = ClipperConnection(cm)
    conn.start_clipper(num_frontend_replicas=2)
    workers = _workers(conn)
    assert len(workers) == 2
    # SIGKILL gives the supervisor no chance to stop its workers: they notice by themselves.
    conn.stop_all(graceful=False)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
