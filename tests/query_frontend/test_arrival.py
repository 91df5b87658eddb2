"""The kernel's age of a request's bytes, read from real TCP and Unix sockets on both loops."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop

from query_frontend.arrival import ArrivalClock

T = TypeVar("T")

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [
    asyncio.new_event_loop,
    uvloop.new_event_loop,
]


class _Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data.set()


async def _age_after(wait_s: float, unix_dir: Path | None = None) -> tuple[float | None, float]:
    """Sends bytes to a server and leaves them wait_s; their age as the server side reads it,
    and the time since they were sent."""
    return await _read_after(wait_s, ArrivalClock().unread_seconds, unix_dir)


async def _read_after(
    wait_s: float, read: Callable[[asyncio.BaseTransport | None], T], unix_dir: Path | None = None
) -> tuple[T, float]:
    """Sends bytes to a server and leaves them wait_s; what `read` says of the server side's
    transport then, and the time since they were sent."""
    loop = asyncio.get_running_loop()
    received = _Received()
    if unix_dir is None:
        server = await loop.create_server(lambda: received, "127.0.0.1", 0)
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    else:
        path = str(unix_dir / "s")
        server = await loop.create_unix_server(lambda: received, path)
        _, writer = await asyncio.open_unix_connection(path)
    try:
        sent = time.monotonic()
        writer.write(b"POST /a/predict HTTP/1.1\r\n\r\n")
        await received.data.wait()
        await asyncio.sleep(wait_s)
        return read(received.transport), time.monotonic() - sent
    finally:
        writer.close()
        server.close()


@pytest.mark.parametrize("new_loop", LOOPS)
def test_the_age_of_bytes_that_waited_is_read_from_the_kernel(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        readings = [runner.run(_age_after(wait_s)) for wait_s in (0.0, 0.1, 0.25)]
    for age, elapsed in readings:
        # The kernel counts in clock ticks of up to 10 ms (HZ=100): one tick off at most.
        assert age is not None
        assert abs(age - elapsed) <= 0.0105, (age, elapsed)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_a_socket_that_cannot_tell_gives_none(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner(loop_factory=new_loop) as runner:
        assert runner.run(_age_after(0.0, Path(tmp)))[0] is None
    assert ArrivalClock().unread_seconds(None) is None


def test_a_closed_connection_gives_none() -> None:
    async def closed() -> float | None:
        received = _Received()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: received, "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname()[:2])
        client.sendall(b"x")
        await received.data.wait()
        assert received.transport is not None
        received.transport.close()
        await asyncio.sleep(0)
        client.close()
        server.close()
        return ArrivalClock().unread_seconds(received.transport)

    assert asyncio.run(closed()) is None


async def _wait_after(
    wait_s: float,
    loop_lag_s: float,
    clock: ArrivalClock,
    unix_dir: Path | None = None,
    exact: bool = False,
) -> float:
    """Like _age_after, through the clock's wait_seconds with the given loop lag."""
    waited, _ = await _read_after(
        wait_s, lambda t: clock.wait_seconds(t, loop_lag_s, exact), unix_dir
    )
    return waited


KEEPING_UP_S = ArrivalClock.ASK_KERNEL_FROM_S / 2
BEHIND_S = ArrivalClock.ASK_KERNEL_FROM_S * 2


def test_a_loop_that_keeps_up_is_taken_at_its_lag_and_a_late_one_asks_the_kernel() -> None:
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        # The bytes waited 0.1 s, but a loop lagging under a tick is trusted without a call.
        assert runner.run(_wait_after(0.1, KEEPING_UP_S, ArrivalClock())) == KEEPING_UP_S
        # A loop behind by more is doubted: the kernel says how long the bytes waited.
        assert abs(runner.run(_wait_after(0.1, BEHIND_S, ArrivalClock())) - 0.1) <= 0.0105
        # A socket that cannot tell leaves the lag.
        unix_dir = Path(tmp)
        assert runner.run(_wait_after(0.1, BEHIND_S, ArrivalClock(), unix_dir)) == BEHIND_S


def test_after_falling_behind_the_kernel_is_asked_until_a_request_is_read_fresh() -> None:
    clock = ArrivalClock()
    with asyncio.Runner() as runner:
        assert abs(runner.run(_wait_after(0.1, BEHIND_S, clock)) - 0.1) <= 0.0105
        # The next tick ran on time, but the loop is still reading what piled up while it was
        # behind: this request's wait is the kernel's, not the lag.
        assert abs(runner.run(_wait_after(0.1, KEEPING_UP_S, clock)) - 0.1) <= 0.0105
        # A request read as soon as it came: the backlog is gone, and so is the doubt.
        assert runner.run(_wait_after(0.0, KEEPING_UP_S, clock)) < ArrivalClock.FRESH_BELOW_S
        assert runner.run(_wait_after(0.1, KEEPING_UP_S, clock)) == KEEPING_UP_S


def test_an_exact_reading_asks_the_kernel_whatever_the_loop_s_lag() -> None:
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        # The bytes waited 0.1 s while the loop's lag said nothing: the kernel's reading wins.
        waited = runner.run(_wait_after(0.1, 0.0, ArrivalClock(), exact=True))
        assert abs(waited - 0.1) <= 0.0105
        # After a stall the lag is large, but a request that came at its end waited little.
        assert runner.run(_wait_after(0.0, 0.3, ArrivalClock(), exact=True)) <= 0.0105
        # A socket that cannot tell leaves the lag.
        assert runner.run(_wait_after(0.1, 0.3, ArrivalClock(), Path(tmp), exact=True)) == 0.3
