"""Scheduling against real replicas: retries when a replica dies mid-batch, shedding, expiry."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from clipper_admin import ClipperConnection
from clipper_admin.deployers.python import create_endpoint, deploy_python_closure
from query_frontend.predictor import OVERLOADED_EXPLANATION, SLO_EXPLANATION
from tests.conftest import predict, replica_pids, wait_for


def _send(conn: ClipperConnection, app: str, body: Any) -> http.client.HTTPConnection:
    """Sends a predict request without waiting for its answer. When this returns the request
    is in the frontend's socket, even while the frontend is off the CPU: the kernel takes the
    connection and its bytes."""
    host, port = conn.get_query_addr().rsplit(":", 1)
    client = http.client.HTTPConnection(host, int(port), timeout=60)
    client.request(
        "POST", f"/{app}/predict", json.dumps(body), {"Content-Type": "application/json"}
    )
    return client


def _answer(client: http.client.HTTPConnection) -> Any:
    with contextlib.closing(client):
        response = client.getresponse()
        text = response.read()
        assert response.status == 200, text
        return json.loads(text)


def _counter(conn: ClipperConnection, name: str) -> int:
    """A counter's count so far, 0 until it is first counted."""
    counters = {k: v for e in conn.inspect_instance()["counters"] for k, v in e.items()}
    counter = counters.get(name)
    return 0 if counter is None else int(counter["count"])


def _overloaded(conn: ClipperConnection, model: str) -> int:
    """How many of the model's queries were refused as overloaded so far."""
    return _counter(conn, f"model:{model}:1:overloaded")


def test_a_replica_killed_mid_batch_loses_no_query(clipper_conn: ClipperConnection) -> None:
    def slow_pid(xs: np.ndarray) -> list[int]:
        time.sleep(1.0)
        return [os.getpid()] * len(xs)

    create_endpoint(
        clipper_conn, "retry", "doubles", slow_pid, slo_micros=20_000_000, num_replicas=2,
        batch_size=5,
    )  # fmt: skip
    pids = replica_pids(clipper_conn, "retry")
    result: dict[str, Any] = {}

    def send() -> None:
        inputs = [[float(i)] for i in range(10)]
        result["response"] = predict(clipper_conn, "retry", {"input_batch": inputs})

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.4)  # both replicas are inside their 1 s batch now
    os.kill(pids[0], signal.SIGKILL)
    sender.join(30)
    outputs = result["response"]["batch_predictions"]
    assert [p["default"] for p in outputs] == [False] * 10
    # Answered by the other replica, or by the killed one's successor that its keeper started.
    assert pids[0] not in {p["output"] for p in outputs}
    assert pids[1] in {p["output"] for p in outputs}


def _deploy_busy_model(conn: ClipperConnection, app: str) -> None:
    """A model that takes 20 ms per query, one at a time, with a 200 ms SLO, measured enough
    for the frontend to trust its latency model."""

    def busy(xs: np.ndarray) -> list[float]:
        time.sleep(0.02 * len(xs))
        return [float(x[0]) for x in xs]

    create_endpoint(conn, app, "doubles", busy, default_output="-1", slo_micros=200_000,
                    batch_size=1)  # fmt: skip
    for i in range(12):
        assert predict(conn, app, {"input": [float(i)]})["default"] is False


def test_overload_is_shed_with_an_explanation_and_answers_stay_within_the_slo(
    clipper_conn: ClipperConnection,
) -> None:
    _deploy_busy_model(clipper_conn, "busy")
    started = time.monotonic()
    response = predict(clipper_conn, "busy", {"input_batch": [[1000.0 + i] for i in range(200)]})
    elapsed = time.monotonic() - started
    outputs = response["batch_predictions"]
    answered = [p for p in outputs if not p["default"]]
    explanations = {p["default_explanation"] for p in outputs if p["default"]}
    assert 2 <= len(answered) <= 15  # about 200 ms of 20 ms batches
    assert explanations <= {OVERLOADED_EXPLANATION, SLO_EXPLANATION}
    assert OVERLOADED_EXPLANATION in explanations
    assert elapsed < 0.5
    assert _overloaded(clipper_conn, "busy") >= 150


def test_single_queries_to_a_saturated_model_get_the_overload_default_when_their_slo_ends(
    clipper_conn: ClipperConnection,
) -> None:
    _deploy_busy_model(clipper_conn, "full")
    replies: list[tuple[dict[str, Any], float]] = []

    def ask(body: dict[str, Any]) -> None:
        started = time.monotonic()
        response = predict(clipper_conn, "full", body)
        replies.append((response, time.monotonic() - started))

    def answer(sent_at: float, client: http.client.HTTPConnection) -> None:
        response = _answer(client)
        replies.append((response, time.monotonic() - sent_at))

    flood = threading.Thread(target=ask, args=({"input_batch": [[float(i)] for i in range(200)]},))
    flood.start()
    wait_for(lambda: _overloaded(clipper_conn, "full") >= 150, 10, "the flood to fill the queue")
    # All 30 are sent before any answer is read, within a few milliseconds of each other.
    sent = [
        (time.monotonic(), _send(clipper_conn, "full", {"input": [500.0 + i]})) for i in range(30)
    ]
    singles = [threading.Thread(target=answer, args=s) for s in sent]
    for single in singles:
        single.start()
    for thread in [flood, *singles]:
        thread.join(10)
    answers = [(r, s) for r, s in replies if "batch_predictions" not in r]
    assert len(answers) == 30
    refused = [s for r, s in answers if r.get("default_explanation") == OVERLOADED_EXPLANATION]
    assert len(refused) >= 20
    # At the 200 ms SLO, as Clipper's timer would answer: a client retrying at once after a
    # refusal would otherwise flood the frontend with requests it can only refuse.
    assert min(refused) > 0.15 and max(refused) < 0.5
    for response, _ in answers:
        assert isinstance(response["query_id"], int)
        assert response["output"] == -1 if response["default"] else response["output"] >= 0
    assert _overloaded(clipper_conn, "full") >= 150 + len(refused)
    time.sleep(0.3)  # the queue has drained: a new query is answered again
    assert predict(clipper_conn, "full", {"input": [4.0]})["output"] == 4.0


def test_expired_queries_are_never_sent(clipper_conn: ClipperConnection, tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"

    def record(xs: np.ndarray) -> list[int]:
        with seen.open("a") as f:
            f.write(f"{len(xs)}\n")
        time.sleep(0.3)
        return [1] * len(xs)

    create_endpoint(clipper_conn, "expiry", "doubles", record, slo_micros=500_000, batch_size=1)
    response = predict(clipper_conn, "expiry", {"input_batch": [[float(i)] for i in range(20)]})
    defaults = [p for p in response["batch_predictions"] if p["default"]]
    assert len(defaults) >= 17
    time.sleep(1.0)  # anything left in the queue would reach the model now
    sent = sum(int(n) for n in seen.read_text().split())
    assert sent <= 3
    # Every default but the one whose batch was at the replica when the SLO ended is counted
    # as expired: parsed and queued, but never sent.
    expired = _counter(clipper_conn, "model:expiry:1:expired")
    assert expired in (len(defaults), len(defaults) - 1)


@contextlib.contextmanager
def _frontend_stalled(conn: ClipperConnection) -> Iterator[None]:
    """The frontend and its workers off the CPU while the block runs."""
    record = Path(conn.cm.cluster_dir) / "processes" / "query_frontend.json"  # type: ignore[attr-defined]
    frontend = psutil.Process(json.loads(record.read_text())["pid"])
    stalled = [frontend, *frontend.children(recursive=True)]
    for process in stalled:
        process.suspend()
    try:
        yield
    finally:
        for process in stalled:
            process.resume()


def _deploy_answering_at_once(conn: ClipperConnection, app: str, slo_micros: int) -> None:
    create_endpoint(conn, app, "doubles", lambda xs: [1] * len(xs), default_output="-1",
                    slo_micros=slo_micros)  # fmt: skip
    assert predict(conn, app, {"input": [0.0]})["default"] is False


def test_a_request_that_waited_unread_counts_that_wait_against_its_slo(
    clipper_conn: ClipperConnection,
) -> None:
    _deploy_answering_at_once(clipper_conn, "stalled", slo_micros=100_000)
    # The frontend is off the CPU for 300 ms, three times the SLO, after the requests arrive:
    # as when a busy core leaves it no time to read them. Reading them all takes it several
    # of its loop-lag ticks, and the later ticks run on time.
    with _frontend_stalled(clipper_conn):
        clients = [_send(clipper_conn, "stalled", {"input": [float(i)]}) for i in range(1, 21)]
        time.sleep(0.3)
    answers = [_answer(client) for client in clients]
    assert all(a["default"] and a["default_explanation"] == SLO_EXPLANATION for a in answers), (
        answers
    )
    time.sleep(0.05)  # the loop has caught up: new requests get their whole SLO again
    assert predict(clipper_conn, "stalled", {"input": [9.0]})["default"] is False


def test_a_request_that_arrived_at_the_end_of_a_stall_keeps_its_whole_slo(
    clipper_conn: ClipperConnection,
) -> None:
    _deploy_answering_at_once(clipper_conn, "late-stall", slo_micros=200_000)
    # The frontend is off the CPU for 400 ms, twice the SLO; the request comes in its last
    # 20 ms. Its SLO counts from its own arrival, not from the start of the stall.
    with _frontend_stalled(clipper_conn):
        time.sleep(0.38)
        client = _send(clipper_conn, "late-stall", {"input": [1.0]})
        time.sleep(0.02)
    answer = _answer(client)
    assert answer["default"] is False, answer


def test_answers_ready_only_after_the_slo_are_replaced_by_the_default(
    clipper_conn: ClipperConnection,
) -> None:
    _deploy_answering_at_once(clipper_conn, "cached", slo_micros=100_000)
    batch = {"input_batch": [[1.0], [2.0]]}
    first = predict(clipper_conn, "cached", batch)["batch_predictions"]
    assert not any(p["default"] for p in first)  # both answers are in the prediction cache now
    # The request waits unread for three times its SLO. Its answers are cached, so they are
    # ready the moment it is read, but a reply then would reach the client past its SLO.
    with _frontend_stalled(clipper_conn):
        client = _send(clipper_conn, "cached", batch)
        time.sleep(0.3)
    late = _answer(client)["batch_predictions"]
    assert all(p["default"] and p["default_explanation"] == SLO_EXPLANATION for p in late), late
    assert _counter(clipper_conn, "internal:late_replies") == 2
    time.sleep(0.05)  # the loop has caught up
    assert not any(
        p["default"] for p in predict(clipper_conn, "cached", batch)["batch_predictions"]
    )


def test_answers_that_come_back_after_the_deadline_are_counted(
    clipper_conn: ClipperConnection,
) -> None:
    def slow(xs: np.ndarray) -> list[int]:
        time.sleep(0.3)
        return [1] * len(xs)

    # A first batch goes whatever its deadline: the frontend has not measured the model yet.
    create_endpoint(clipper_conn, "late", "doubles", slow, slo_micros=100_000)
    response = predict(clipper_conn, "late", {"input": [1.0]})
    assert response["default"] and response["default_explanation"] == SLO_EXPLANATION

    def late_answers() -> int:
        return _counter(clipper_conn, "model:late:1:late_answers")

    # The batch is still running in the replica.
    wait_for(lambda: late_answers() > 0, 5, "the late batch to come back")
    assert late_answers() == 1


def test_a_replica_that_holds_the_gil_past_its_heartbeat_ttl_still_answers_its_batch(
    clipper_conn: ClipperConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ttl shorter than one call, as for a call longer than the default ttl: the replica's
    # heartbeat cannot run while the model holds the GIL, and its record expires. Replicas of
    # the embedded cluster get this process's environment.
    monkeypatch.setenv("CLIPPER_HEARTBEAT_INTERVAL_S", "0.2")
    monkeypatch.setenv("CLIPPER_HEARTBEAT_TTL_S", "1")

    def holds_the_gil(xs: np.ndarray) -> list[str]:
        import re

        # Backtracking in the regular expression engine, in C, without a GIL release: about
        # 2 s for 26 letters, 0.1 s for 20.
        return [str(re.match(r"(a+)+b", "a" * int(x[0])) is None) for x in xs]

    create_endpoint(clipper_conn, "hold", "doubles", holds_the_gil, slo_micros=30_000_000)
    assert predict(clipper_conn, "hold", {"input": [20.0]})["output"] == "True"
    started = time.monotonic()
    response = predict(clipper_conn, "hold", {"input": [26.0]})
    assert response == {"query_id": 1, "output": "True", "default": False}
    assert time.monotonic() - started < 10
    # The record did expire meanwhile: the frontend saw the replica leave routing.
    logs = Path(clipper_conn.cm.cluster_dir) / "logs"  # type: ignore[attr-defined]
    assert " left" in "".join(
        line for line in (logs / "query_frontend.log").open() if "replica hold:1:0@" in line
    )


def test_a_query_that_waited_on_a_twin_shed_for_a_shorter_slo_is_queued_again(
    clipper_conn: ClipperConnection,
) -> None:
    def slow_echo(xs: np.ndarray) -> list[float]:
        time.sleep(0.4)
        return [float(x[0]) for x in xs]

    deploy_python_closure(clipper_conn, "shared", "1", "doubles", slow_echo)
    for app, slo_micros in (("hurried", 150_000), ("patient", 10_000_000)):
        clipper_conn.register_application(app, "doubles", "-1", slo_micros)
        clipper_conn.link_model_to_app(app, "shared")
    busy = _send(clipper_conn, "patient", {"input": [1.0]})
    time.sleep(0.1)  # its batch is at the only replica now
    # The same input from two apps: the second waits on the first, which the queue sheds when
    # the hurried app's SLO runs out, long before the patient app's.
    hurried = _send(clipper_conn, "hurried", {"input": [2.0]})
    patient = _send(clipper_conn, "patient", {"input": [2.0]})
    assert _answer(hurried)["default_explanation"] == SLO_EXPLANATION
    assert _answer(patient)["output"] == 2.0
    assert _answer(busy)["output"] == 1.0
