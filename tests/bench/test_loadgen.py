"""The load generator against real HTTP servers: framing, defaults, errors and reconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from bench.loadgen import clipper_classifier, closed_loop, open_loop


async def _answer(request: web.Request) -> web.StreamResponse:
    doc = orjson.loads(await request.read())
    reply = orjson.dumps({"output": len(doc["input"]), "default": doc["input"][0] < 0})
    if request.match_info["kind"] == "chunked":
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(reply), 7):
            await response.write(reply[i : i + 7])
        await response.write_eof()
        return response
    if request.match_info["kind"] == "close":
        return web.Response(body=reply, headers={"Connection": "close"})
    if request.match_info["kind"] == "fail":
        return web.Response(status=500, body=b"{}")
    return web.Response(body=reply, content_type="application/json")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{kind}", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


BODIES = [orjson.dumps({"input": [float(i)] * (1 + i)}) for i in range(4)] + [
    orjson.dumps({"input": [-1.0]})
]


@pytest.mark.parametrize("kind", ["plain", "chunked", "close"])
async def test_closed_loop_reads_every_framing(base_url: str, kind: str) -> None:
    result = await closed_loop(f"{base_url}/{kind}", BODIES, 4, 0.3, clipper_classifier, 0.1)
    assert result.errors == 0
    assert len(result.latencies_s) >= 20
    # One body in five asks for a default.
    assert result.defaults == pytest.approx(len(result.latencies_s) / 5, abs=4)
    assert len(result.answered_latencies_s) == len(result.latencies_s) - result.defaults


async def test_open_loop_keeps_its_rate_and_counts_errors(base_url: str) -> None:
    result = await open_loop(f"{base_url}/plain", BODIES, 400.0, 0.5, clipper_classifier,
                             connections=8, warmup_s=0.1)  # fmt: skip
    assert result.errors == 0
    assert 120 <= len(result.latencies_s) <= 280
    failing = await open_loop(f"{base_url}/fail", BODIES, 100.0, 0.2, clipper_classifier,
                              connections=4, warmup_s=0.0)  # fmt: skip
    assert failing.errors == failing.sent > 0
    assert not failing.latencies_s


async def test_open_loop_latency_leaves_out_the_load_generators_own_lag(base_url: str) -> None:
    loop = asyncio.get_running_loop()
    # The load generator's loop stalls for 60 ms (its own work, as when many answers come in
    # at once): requests due meanwhile go out late, through no fault of the server.
    loop.call_later(0.25, time.sleep, 0.06)
    result = await open_loop(f"{base_url}/plain", BODIES, 200.0, 0.5, clipper_classifier,
                             connections=8, warmup_s=0.0)  # fmt: skip
    assert result.errors == 0
    assert max(result.send_lags_s) >= 0.04  # the stall is on record as the client's lag
    # Only requests in flight during the stall (at most a couple at 200/s) count any of it.
    assert sum(1 for latency in result.latencies_s if latency > 0.03) <= 2


async def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    result = await closed_loop("http://127.0.0.1:9/x", BODIES, 2, 0.1, clipper_classifier, 0.0)
    assert result.errors == result.sent > 0
