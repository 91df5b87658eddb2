"""POST /<app>/predict against a real cluster: the five input types, errors, cache, metrics."""

from __future__ import annotations

import base64
import json
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.deployers.python import create_endpoint
from tests.conftest import new_connection, predict, wait_for


def _describe(xs: Any) -> list[str]:
    return [json.dumps({"dtype": str(np.asarray(x).dtype), "value": np.asarray(x).tolist()})
            for x in xs]  # fmt: skip


def _upper(xs: Any) -> list[str]:
    return [x.decode().upper() for x in xs]


def _bytes_summary(xs: Any) -> list[str]:
    return [json.dumps({"len": len(x), "first": int(x[0]), "dtype": str(x.dtype)}) for x in xs]


def _nondeterministic(xs: Any) -> list[int]:
    import random

    return [random.randrange(1 << 30) for _ in xs]


# Each frontend configuration the tests here run against: its environment.
_FRONTENDS = {
    "uvloop": {"CLIPPER_QF_EVENT_LOOP": "uvloop"},
    "asyncio": {"CLIPPER_QF_EVENT_LOOP": "asyncio"},
    "aiohttp-protocol": {"CLIPPER_QF_PREDICT_PROTOCOL": "aiohttp"},
}


@pytest.fixture(scope="module", params=list(_FRONTENDS))
def frontend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory, frontend: str) -> Iterator[ClipperConnection]:
    """A cluster whose frontend runs on each event loop, and with aiohttp reading every request,
    in turn: every test here runs on each."""
    connection = new_connection(tmp_path_factory.mktemp("qf-cluster"), "qf")
    with pytest.MonkeyPatch.context() as env:
        for name, value in _FRONTENDS[frontend].items():
            env.setenv(name, value)
        connection.start_clipper()
    try:
        create_endpoint(connection, "doubles-app", "doubles", _describe)
        create_endpoint(connection, "floats-app", "floats", _describe)
        create_endpoint(connection, "ints-app", "integers", _describe)
        create_endpoint(connection, "strings-app", "strings", _upper)
        create_endpoint(connection, "bytes-app", "bytes", _bytes_summary)
        create_endpoint(connection, "random-app", "doubles", _nondeterministic)
        connection.register_application("unlinked-app", "doubles", "nothing", 100000)
        yield connection
    finally:
        connection.stop_all(graceful=False)


def _post(conn: ClipperConnection, path: str, data: str | bytes) -> requests.Response:
    return requests.post(f"http://{conn.get_query_addr()}/{path}", data=data, timeout=30)


def _assert_json_error(response: requests.Response, status: int, error: str, cause: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error
    assert cause in body["cause"], body["cause"]


@pytest.mark.parametrize(
    ("app", "value", "dtype"),
    [
        ("doubles-app", [1.5, 2, -3.25], "float64"),
        ("floats-app", [1.5, 2, -3.25], "float32"),
        ("ints-app", [1, -2, 2147483647], "int32"),
    ],
)
def test_numeric_inputs_arrive_with_their_dtype(
    conn: ClipperConnection, app: str, value: list[float], dtype: str
) -> None:
    response = predict(conn, app, {"input": value})
    assert response["default"] is False
    assert response["output"] == {"dtype": dtype, "value": [float(v) for v in value]}


def test_strings_arrive_as_bytes(conn: ClipperConnection) -> None:
    assert predict(conn, "strings-app", {"input": "héllo"})["output"] == "HÉLLO"
    batch = predict(conn, "strings-app", {"input_batch": ["a", "b"]})["batch_predictions"]
    assert [p["output"] for p in batch] == ["A", "B"]


def test_bytes_arrive_decoded_from_base64(conn: ClipperConnection) -> None:
    payload = bytes([200, 1, 2, 3])
    response = predict(conn, "bytes-app", {"input": base64.b64encode(payload).decode()})
    assert response["output"] == {"len": 4, "first": 200 - 256, "dtype": "int8"}


def _post_binary(conn: ClipperConnection, path: str, data: bytes) -> requests.Response:
    return requests.post(
        f"http://{conn.get_query_addr()}/{path}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("app", "wire_dtype", "dtype"),
    [
        ("doubles-app", "<f8", "float64"),
        ("floats-app", "<f4", "float32"),
        ("ints-app", "<i4", "int32"),
    ],
)
def test_a_binary_body_of_little_endian_numbers_is_one_input(
    conn: ClipperConnection, app: str, wire_dtype: str, dtype: str
) -> None:
    response = _post_binary(conn, f"{app}/predict", np.array([7, -2], wire_dtype).tobytes())
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"dtype": dtype, "value": [7, -2]}
    assert response.json()["default"] is False


def test_a_binary_body_of_text_or_bytes_is_one_input_as_it_is(conn: ClipperConnection) -> None:
    assert _post_binary(conn, "strings-app/predict", "héllo".encode()).json()["output"] == "HÉLLO"
    response = _post_binary(conn, "bytes-app/predict", bytes([200, 1, 2]))
    assert response.json()["output"] == {"len": 3, "first": 200 - 256, "dtype": "int8"}


def test_a_binary_body_is_the_same_query_as_its_json(conn: ClipperConnection) -> None:
    # The same input either way, so the second is answered from the cache.
    first = predict(conn, "random-app", {"input": [4.0, 7.0]})["output"]
    binary = _post_binary(conn, "random-app/predict", np.array([4.0, 7.0]).tobytes())
    assert binary.json()["output"] == first


def test_a_binary_body_names_its_version_in_the_url(conn: ClipperConnection) -> None:
    data = np.array([3.0]).tobytes()
    response = _post_binary(conn, "doubles-app/predict?version=1", data)
    assert response.json()["output"] == {"dtype": "float64", "value": [3.0]}
    response = _post_binary(conn, "doubles-app/predict?version=9", data)
    _assert_json_error(
        response,
        400,
        "Query processing error",
        "Requested version: 9 does not exist for model: doubles-app",
    )


@pytest.mark.parametrize(
    ("app", "data", "cause"),
    [
        (
            "doubles-app",
            b"\x00" * 13,
            "An application/octet-stream body for a doubles app holds little-endian 64-bit "
            "floats, 8 bytes each: 13 bytes are not a whole number of them",
        ),
        ("ints-app", b"\x00" * 6, "holds little-endian 32-bit integers, 4 bytes each: 6 bytes"),
        (
            "strings-app",
            b"caf\xe9",
            "An application/octet-stream body for a strings app is UTF-8 text, and this is not",
        ),
    ],
)
def test_a_binary_body_that_is_not_its_input_type_is_a_400(
    conn: ClipperConnection, app: str, data: bytes, cause: str
) -> None:
    _assert_json_error(_post_binary(conn, f"{app}/predict", data), 400, "Bad request", cause)


def _array_with_bool(filler: float) -> str:
    return json.dumps({"input": [filler] * 500 + [1, False, 3]})


@pytest.mark.parametrize(
    ("app", "body", "cause"),
    [
        ("doubles-app", "{not json", "Error parsing JSON: JSON parse error"),
        ("doubles-app", "[1, 2]", "must be a JSON object"),
        ("doubles-app", '{"inputs": [1.0]}', "does not have required keys input or input_batch"),
        ("doubles-app", '{"input": "1.0"}', "JSON key input expected type Array but found type"),
        (
            "doubles-app",
            '{"input": [1.0, "x"]}',
            "Array input of type String is not of type double",
        ),
        ("doubles-app", '{"input_batch": [1.0]}', "JSON key input_batch[0] expected type Array"),
        ("doubles-app", '{"input_batch": {"a": 1}}', "JSON key input_batch expected type Array"),
        ("ints-app", '{"input": [1.0]}', "Array input of type Number is not of type integer"),
        # Booleans among many numbers: few zeros and ones, then mostly zeros and ones.
        ("floats-app", _array_with_bool(0.5), "Array input of type Bool is not of type float"),
        ("doubles-app", _array_with_bool(0.0), "Array input of type Bool is not of type double"),
        ("ints-app", _array_with_bool(7), "Array input of type Bool is not of type integer"),
        ("ints-app", '{"input": [1, true]}', "Array input of type Bool is not of type integer"),
        ("ints-app", '{"input": [4294967296]}', "does not fit 32-bit integers"),
        ("floats-app", '{"input": [1e300]}', "does not fit 32-bit floats"),
        ("strings-app", '{"input": ["a"]}', "JSON key input expected type String"),
        ("bytes-app", '{"input": "not base64!"}', "is not valid base64"),
        (
            "doubles-app",
            '{"input": [1.0], "version": [1]}',
            "JSON key version expected type String",
        ),
    ],
)
def test_bad_input_is_a_json_400(conn: ClipperConnection, app: str, body: str, cause: str) -> None:
    response = _post(conn, f"{app}/predict", body)
    _assert_json_error(response, 400, "Json error", cause)
    assert "Expected JSON schema" in response.json()["cause"]


def test_unknown_version_and_unlinked_version_are_query_errors(conn: ClipperConnection) -> None:
    _assert_json_error(
        _post(conn, "doubles-app/predict", '{"input": [1.0], "version": "7"}'),
        400,
        "Query processing error",
        "Requested version: 7 does not exist for model: doubles-app",
    )
    _assert_json_error(
        _post(conn, "unlinked-app/predict", '{"input": [1.0], "version": "1"}'),
        400,
        "Query processing error",
        "No model is linked to application unlinked-app",
    )
    assert predict(conn, "doubles-app", {"input": [1.0], "version": 1})["default"] is False


def test_predicts_are_answered_by_the_configured_protocol(
    conn: ClipperConnection, frontend: str
) -> None:
    response = _post(conn, "doubles-app/predict", '{"input": [1.0]}')
    assert response.json()["output"] == {"dtype": "float64", "value": [1.0]}
    # aiohttp names itself in a Server header; the frontend's own protocol sends none.
    assert ("aiohttp" in response.headers.get("Server", "")) == (frontend == "aiohttp-protocol")


def test_unknown_app_and_route_are_json_404(conn: ClipperConnection) -> None:
    _assert_json_error(
        _post(conn, "no-such-app/predict", '{"input": [1.0]}'), 404, "Not found", "no-such-app"
    )
    _assert_json_error(_post(conn, "a/b/c", "{}"), 404, "Not Found", "/a/b/c")
    response = requests.get(f"http://{conn.get_query_addr()}/doubles-app/predict", timeout=10)
    _assert_json_error(response, 405, "Method Not Allowed", "GET")


def test_batches_keep_input_order_and_empty_batch(conn: ClipperConnection) -> None:
    values = [[float(i), 0.5] for i in range(40)]
    batch = predict(conn, "doubles-app", {"input_batch": values})["batch_predictions"]
    assert [p["output"]["value"] for p in batch] == values
    ids = [p["query_id"] for p in batch]
    assert ids == list(range(ids[0], ids[0] + 40))
    assert predict(conn, "doubles-app", {"input_batch": []}) == {"batch_predictions": []}


def test_an_input_batch_over_the_default_maximum_is_a_400(conn: ClipperConnection) -> None:
    # The default maximum, 10,000 inputs, on both parsers: simdjson's for numbers, orjson's.
    for app, item in (("doubles-app", [1.0]), ("strings-app", "a")):
        response = _post(conn, f"{app}/predict", json.dumps({"input_batch": [item] * 10001}))
        _assert_json_error(
            response, 400, "Bad request", "input_batch holds 10001 inputs, more than the 10000"
        )
    response = _post(conn, "strings-app/predict", json.dumps({"input_batch": ["b"] * 10000}))
    assert response.status_code == 200
    assert len(response.json()["batch_predictions"]) == 10000


def test_unlinked_app_answers_default_at_once(conn: ClipperConnection) -> None:
    response = predict(conn, "unlinked-app", {"input": [1.0]})
    assert response["output"] == "nothing"
    assert response["default_explanation"] == "No connected models found for query"


def test_identical_queries_come_from_the_cache(conn: ClipperConnection) -> None:
    first = predict(conn, "random-app", {"input": [4.0, 2.0]})["output"]
    second = predict(conn, "random-app", {"input": [4.0, 2.0]})["output"]
    other = predict(conn, "random-app", {"input": [4.0, 2.5]})["output"]
    assert first == second
    assert other != first
    # Identical inputs inside one batch are sent once and share the answer.
    batch = predict(conn, "random-app", {"input_batch": [[9.0], [9.0], [9.0]]})
    assert len({p["output"] for p in batch["batch_predictions"]}) == 1


def test_metrics_report_clipper_shape(conn: ClipperConnection) -> None:
    predict(conn, "doubles-app", {"input_batch": [[1.0], [2.0]]})
    metrics = conn.inspect_instance()
    counters = {k: v for entry in metrics["counters"] for k, v in entry.items()}
    assert int(counters["app:doubles-app:num_predictions"]["count"]) >= 2
    assert int(counters["internal:aggregate_num_predictions"]["count"]) >= 2
    histograms = {k: v for entry in metrics["histograms"] for k, v in entry.items()}
    assert histograms["app:doubles-app:prediction_latency"]["unit"] == "microseconds"
    assert float(histograms["app:doubles-app:prediction_latency"]["p99"]) > 0
    assert all(isinstance(v, str) for h in histograms.values() for v in h.values())


def test_metrics_of_a_removed_app_and_model_are_dropped(conn: ClipperConnection) -> None:
    def names() -> set[str]:
        metrics = conn.inspect_instance()
        return {name for kind in metrics.values() for entry in kind for name in entry}

    create_endpoint(conn, "short-lived", "doubles", lambda xs: [1] * len(xs))
    predict(conn, "short-lived", {"input": [1.0]})
    assert {"app:short-lived:num_predictions", "model:short-lived:1:batches"} <= names()
    conn.unregister_application("short-lived")
    conn.stop_models(["short-lived"])
    removed = ("app:short-lived:", "model:short-lived:")
    wait_for(
        lambda: not any(name.startswith(removed) for name in names()),
        5,
        "the frontend to drop the removed app's and model's metrics",
    )
    assert "app:doubles-app:num_predictions" in names()


def test_update_route_accepts_feedback(conn: ClipperConnection) -> None:
    response = _post(conn, "doubles-app/update", '{"uid": 0, "input": [1.0], "label": 1.0}')
    assert response.status_code == 200
    assert response.text == "Feedback received? 1"
    _assert_json_error(_post(conn, "doubles-app/update", "{}"), 400, "Json error", "uid")


def test_an_unknown_event_loop_stops_the_frontend_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPPER_QF_EVENT_LOOP", "trio")
    connection = new_connection(tmp_path, "bad-loop")
    try:
        with pytest.raises(
            ClipperException, match=r"CLIPPER_QF_EVENT_LOOP=.trio.: Input should be"
        ):
            connection.start_clipper()
    finally:
        connection.stop_all(graceful=False)


def test_more_connections_than_the_shells_usual_file_limit_are_served(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files here is {hard}")
    # The cluster's processes inherit a soft limit of 256, as a shell's 1024 but smaller.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        connection = new_connection(tmp_path, "fds")
        connection.start_clipper()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    held: list[socket.socket] = []
    try:
        create_endpoint(connection, "many", "doubles", _describe)
        host, port = connection.get_query_addr().rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(600)]
        # Each held connection is a file of the frontend's, accepted or waiting to be.
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in held:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert predict(connection, "many", {"input": [2.5]})["default"] is False
    finally:
        for sock in held:
            sock.close()
        connection.stop_all(graceful=False)
