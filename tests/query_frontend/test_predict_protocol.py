"""PredictSite on a real port, spoken to over raw sockets: predicts it answers itself, other
routes handed to aiohttp, HTTP/1.1 framing, errors, limits and shutdown."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clipper_admin.container_manager import find_unbound_port
from management.store import Store
from query_frontend.codec import BinaryInput, binary_input
from query_frontend.errors import NOT_FOUND, QueryError
from query_frontend.predict_site import PredictSite
from query_frontend.routing import ClusterWatcher

MAX_BODY_BYTES = 1000


@dataclass
class Model:
    """The predict call: echoes its app and body; "slow" waits for its gate, "missing" and
    "broken" raise."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)

    async def __call__(
        self, app: str, body: bytes, transport: asyncio.Transport, binary: BinaryInput | None
    ) -> bytes:
        self.calls.append(app)
        if app == "slow":
            await self.gate.wait()
        if app == "missing":
            raise QueryError(NOT_FOUND, "No application named 'missing' exists", status=404)
        if app == "broken":
            raise RuntimeError("a bug")
        answer: dict[str, str | None] = {"app": app, "body": body.decode()}
        if binary is not None:
            answer["binary_version"] = binary.version
        return orjson.dumps(answer)


@dataclass
class Served:
    port: int
    model: Model
    runner: web.AppRunner


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def _start(keepalive_timeout_s: float = 75.0) -> Served:
    model = Model()

    async def predict(request: web.Request) -> web.Response:
        binary = binary_input(request.headers.get("Content-Type", ""), request.query_string)
        transport = cast(asyncio.Transport, request.transport)
        body = await model(request.match_info["app"], await request.read(), transport, binary)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", _hello)
    app.router.add_post("/echo", _echo)
    app.router.add_post("/{app}/predict", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = PredictSite(
        runner,
        model,
        host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY_BYTES,
        keepalive_timeout_s=keepalive_timeout_s,
        shutdown_timeout_s=5.0,
    )
    await site.start()
    return Served(int(runner.addresses[0][1]), model, runner)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    served = await _start()
    yield served
    served.model.gate.set()
    await served.runner.cleanup()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


async def _read_response(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return Response(status, headers, body)


async def _connect(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", served.port)


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_predicts_on_a_connection_are_answered_here_in_order(served: Served) -> None:
    reader, writer = await _connect(served)
    # Pipelined, the first one slow: the answers still come in the order of the requests.
    writer.write(
        _post("/slow/predict", b"1") + _post("/b/predict/", b"2") + _post("/c/predict?x=1", b"3")
    )
    await asyncio.sleep(0.1)
    assert served.model.calls == ["slow"]
    served.model.gate.set()
    answers = [await _read_response(reader) for _ in range(3)]
    assert [a.json() for a in answers] == [
        {"app": "slow", "body": "1"},
        {"app": "b", "body": "2"},
        {"app": "c", "body": "3"},
    ]
    assert all(a.status == 200 and a.headers["content-type"] == "application/json" for a in answers)
    # Not aiohttp's answers: its responses name it in a Server header.
    assert all("server" not in a.headers and "date" in a.headers for a in answers)
    writer.write(_post("/my%20app/predict", b"4"))
    assert (await _read_response(reader)).json() == {"app": "my app", "body": "4"}
    writer.close()


async def test_a_connection_that_starts_with_another_route_is_aiohttps(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
    hello = await _read_response(reader)
    assert (hello.status, hello.body) == (200, b"hello")
    assert "aiohttp" in hello.headers["server"]
    # The connection stays aiohttp's, keep-alive, and its predict route answers.
    writer.write(_post("/a/predict", b"5"))
    answer = await _read_response(reader)
    assert answer.json() == {"app": "a", "body": "5"}
    assert "aiohttp" in answer.headers["server"]
    writer.write(b"GET /a/predict HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await _read_response(reader)).status == 405
    writer.close()


async def test_another_route_after_a_predict_is_handed_over_as_it_came(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(_post("/a/predict", b"1"))
    assert (await _read_response(reader)).json() == {"app": "a", "body": "1"}
    writer.write(_post("/echo", b"x" * 5000))
    echo = await _read_response(reader)
    assert (echo.status, echo.body) == (200, b"x" * 5000)
    assert echo.headers.get("connection", "keep-alive").lower() == "keep-alive"
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await _read_response(reader)).status == 404
    writer.close()


async def test_another_route_pipelined_behind_a_predict_is_answered_then_the_connection_ends(
    served: Served,
) -> None:
    reader, writer = await _connect(served)
    writer.write(_post("/slow/predict", b"1") + _post("/echo", b"tail") + _post("/b/predict", b"2"))
    await asyncio.sleep(0.1)
    served.model.gate.set()
    assert (await _read_response(reader)).json() == {"app": "slow", "body": "1"}
    echo = await _read_response(reader)
    # Its first byte was inside a read that held the predict: rebuilt, with Connection: close.
    assert (echo.status, echo.body, echo.headers["connection"]) == (200, b"tail", "close")
    assert await _closed(reader)
    assert served.model.calls == ["slow"]


@pytest.mark.parametrize("path", ["/predict", "/predict/", "//predict", "/predict?x=1"])
async def test_a_post_to_predict_without_an_app_is_aiohttps_404(served: Served, path: str) -> None:
    reader, writer = await _connect(served)
    writer.write(_post(path, b"1"))
    answer = await _read_response(reader)
    assert answer.status == 404
    assert "aiohttp" in answer.headers["server"]
    assert served.model.calls == []
    # The connection goes on.
    writer.write(_post("/a/predict", b"2"))
    assert (await _read_response(reader)).json() == {"app": "a", "body": "2"}
    writer.close()


async def test_a_binary_body_is_passed_on_with_the_version_in_its_query(served: Served) -> None:
    octets = "Content-Type: application/octet-stream"
    reader, writer = await _connect(served)
    writer.write(
        _post("/a/predict?version=2", b"\x01\x02", octets)
        + _post("/a/predict", b"x", "Content-Type: Application/Octet-Stream; charset=binary")
        + _post("/a/predict?version=2", b'{"input": [1]}', "Content-Type: application/json")
    )
    answers = [(await _read_response(reader)).json() for _ in range(3)]
    assert answers == [
        {"app": "a", "body": "\x01\x02", "binary_version": "2"},
        {"app": "a", "body": "x", "binary_version": None},
        {"app": "a", "body": '{"input": [1]}'},
    ]
    # The same on a connection that aiohttp serves.
    writer.write(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await _read_response(reader)).body == b"hello"
    writer.write(_post("/a/predict?version=&x=1", b"y", octets))
    assert (await _read_response(reader)).json() == {
        "app": "a",
        "body": "y",
        "binary_version": "",
    }
    writer.close()


async def test_chunked_body_after_100_continue(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(
        b"POST /a/predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (await _read_response(reader)).json() == {"app": "a", "body": "abcde"}
    writer.close()


async def test_a_body_split_over_many_writes_arrives_whole(served: Served) -> None:
    reader, writer = await _connect(served)
    data = _post("/a/predict", b"0123456789" * 50)
    for i in range(0, len(data), 7):
        writer.write(data[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0)
    assert (await _read_response(reader)).json() == {"app": "a", "body": "0123456789" * 50}
    writer.close()


async def test_a_malformed_request_gets_a_json_400_and_the_connection_ends(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    answer = await _read_response(reader)
    assert answer.status == 400
    assert answer.json() == {
        "error": "Bad request",
        "cause": "Malformed HTTP request: Invalid method encountered",
    }
    assert await _closed(reader)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_a_json_413(served: Served, chunked: bool) -> None:
    reader, writer = await _connect(served)
    if chunked:
        chunk = b"x" * 600
        writer.write(
            b"POST /a/predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        )
    else:
        writer.write(_post("/a/predict", b"x" * (MAX_BODY_BYTES + 1)))
    answer = await _read_response(reader)
    assert (answer.status, answer.headers["connection"]) == (413, "close")
    assert answer.json() == {
        "error": "Request Entity Too Large",
        "cause": f"The request body is over {MAX_BODY_BYTES} bytes",
    }
    assert await _closed(reader)
    assert served.model.calls == []


async def test_headers_over_the_limit_are_a_json_400(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(_post("/a/predict", b"1", *(f"X-Filler-{i}: {'y' * 1000}" for i in range(70))))
    answer = await _read_response(reader)
    assert answer.status == 400
    assert "headers are over" in answer.json()["cause"]  # type: ignore[index]
    assert await _closed(reader)


async def test_a_header_that_never_ends_is_a_json_400(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(b"POST /a/predict HTTP/1.1\r\nHost: test\r\nX-Endless: ")
    # The client goes on sending after the reply: the reply must reach it all the same.
    for _ in range(20):
        writer.write(b"y" * 10_000)
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await _read_response(reader)
    assert answer.status == 400
    assert "headers are over" in answer.json()["cause"]  # type: ignore[index]
    assert await _closed(reader)


@pytest.mark.parametrize(
    ("version", "connection", "kept"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
    ],
)
async def test_keep_alive_follows_the_request(
    served: Served, version: str, connection: str | None, kept: bool
) -> None:
    reader, writer = await _connect(served)
    extra = [] if connection is None else [f"Connection: {connection}"]
    for _ in range(2 if kept else 1):
        writer.write(
            _post("/a/predict", b"1", *extra).replace(b"HTTP/1.1", f"HTTP/{version}".encode(), 1)
        )
        answer = await _read_response(reader)
        assert answer.json() == {"app": "a", "body": "1"}
    if kept:
        assert answer.headers.get("connection", "keep-alive") == "keep-alive"
        writer.close()
    else:
        assert answer.headers["connection"] == "close"
        assert await _closed(reader)


async def test_query_errors_and_bugs_are_json_and_the_connection_goes_on(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(
        _post("/missing/predict", b"1") + _post("/broken/predict", b"1") + _post("/a/predict", b"1")
    )
    missing, broken, fine = [await _read_response(reader) for _ in range(3)]
    assert (missing.status, missing.json()) == (
        404,
        {"error": "Not found", "cause": "No application named 'missing' exists"},
    )
    assert (broken.status, broken.json()) == (
        500,
        {"error": "Internal error", "cause": "An unexpected error occurred!"},
    )
    assert fine.json() == {"app": "a", "body": "1"}
    writer.close()


async def test_a_half_closed_client_still_gets_its_answers(served: Served) -> None:
    reader, writer = await _connect(served)
    writer.write(_post("/slow/predict", b"1") + _post("/b/predict", b"2"))
    writer.write_eof()
    await asyncio.sleep(0.1)
    served.model.gate.set()
    assert [(await _read_response(reader)).json() for _ in range(2)] == [
        {"app": "slow", "body": "1"},
        {"app": "b", "body": "2"},
    ]
    assert await _closed(reader)


async def test_shutdown_answers_the_predicts_in_flight_then_closes(served: Served) -> None:
    reader, writer = await _connect(served)
    idle_reader, _ = await _connect(served)
    writer.write(_post("/slow/predict", b"1"))
    await asyncio.sleep(0.1)
    cleanup = asyncio.create_task(served.runner.cleanup())
    # The idle connection ends at once, and the port takes no new ones.
    assert await _closed(idle_reader)
    with pytest.raises(OSError):
        await _connect(served)
    assert not cleanup.done()
    served.model.gate.set()
    answer = await _read_response(reader)
    assert (answer.json(), answer.headers["connection"]) == ({"app": "slow", "body": "1"}, "close")
    assert await _closed(reader)
    await asyncio.wait_for(cleanup, 5)


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    served = await _start(keepalive_timeout_s=0.3)
    try:
        reader, writer = await _connect(served)
        # The idle time counts from when the answer was written: after this, and before the
        # answer is read here.
        started = asyncio.get_running_loop().time()
        writer.write(_post("/a/predict", b"1"))
        await _read_response(reader)
        assert await _closed(reader)
        assert asyncio.get_running_loop().time() - started >= 0.3
    finally:
        await served.runner.cleanup()


@pytest.mark.parametrize(
    "partial",
    [b"POST /a/predict HTTP/1.1\r\nHost: te", _post("/a/predict", b"12345")[:-2]],
    ids=["in-the-head", "in-the-body"],
)
async def test_a_request_that_stops_arriving_is_closed_after_the_keepalive_timeout(
    partial: bytes,
) -> None:
    served = await _start(keepalive_timeout_s=0.3)
    try:
        reader, writer = await _connect(served)
        started = asyncio.get_running_loop().time()
        writer.write(partial)
        assert await _closed(reader)
        assert asyncio.get_running_loop().time() - started >= 0.3
        # A request that keeps arriving, however slowly, is read to its end and answered.
        reader, writer = await _connect(served)
        request = _post("/a/predict", b"12345")
        for at in range(0, len(request), 8):
            writer.write(request[at : at + 8])
            await asyncio.sleep(0.05)
        assert asyncio.get_running_loop().time() - started >= 0.6
        assert (await _read_response(reader)).json() == {"app": "a", "body": "12345"}
    finally:
        await served.runner.cleanup()


async def test_many_pipelined_requests_all_get_answers(served: Served) -> None:
    reader, writer = await _connect(served)
    count = 200
    writer.write(b"".join(_post(f"/a{i}/predict", b"%d" % i) for i in range(count)))
    for i in range(count):
        assert (await _read_response(reader)).json() == {"app": f"a{i}", "body": str(i)}
    writer.close()


def test_the_site_listens_on_a_socket_it_is_given() -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        runner = web.AppRunner(web.Application())
        await runner.setup()
        model = Model()
        await PredictSite(runner, model, sock=sock, max_body_bytes=MAX_BODY_BYTES).start()
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(_post("/a/predict", b"1"))
        assert (await _read_response(reader)).json() == {"app": "a", "body": "1"}
        writer.close()
        await runner.cleanup()

    asyncio.run(main())


async def test_a_predict_that_asks_to_upgrade_is_answered_by_aiohttp(served: Served) -> None:
    reader, writer = await _connect(served)
    # As curl --http2 sends it to an http:// URL: aiohttp answers it over HTTP/1.1.
    writer.write(
        _post(
            "/a/predict",
            b"body",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
        )
    )
    answer = await _read_response(reader)
    assert answer.json() == {"app": "a", "body": "body"}
    assert "aiohttp" in answer.headers["server"]
    writer.close()


async def test_other_routes_are_answered_while_the_cluster_watcher_has_lost_redis(
    served: Served,
) -> None:
    # Compiled, the watcher once slept out its reconnect backoff inside its except block, which
    # left the Redis error as the thread's current exception: connections handed to aiohttp
    # meanwhile were dropped unanswered (27 of 623 /healthz requests with Redis killed).
    redis = aioredis.Redis(port=find_unbound_port(), retry=Retry(NoBackoff(), 0))
    watcher = ClusterWatcher(
        Store(redis), lambda state: None, resync_interval_s=1.0, frontend_id="test"
    )
    watcher.start()
    try:
        for _ in range(40):
            reader, writer = await _connect(served)
            writer.write(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
            hello = await _read_response(reader)
            assert (hello.status, hello.body) == (200, b"hello")
            writer.close()
            await asyncio.sleep(0.01)
    finally:
        await watcher.stop()
        await redis.aclose()
