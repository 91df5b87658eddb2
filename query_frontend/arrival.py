"""How long a request sat unread: the event loop's lag while a sample of the kernel's readings
bears it out, else the kernel's time since the request's connection last received data."""

from __future__ import annotations

import asyncio
import ctypes
import socket
import struct
from typing import Any, ClassVar

# struct tcp_info (linux/tcp.h): eight one-byte fields, eleven u32s, then tcpi_last_data_recv,
# in milliseconds. The layout only ever grows at its end, so the offset holds on every kernel.
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 52
_TCP_INFO_LEN = _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def _libc_getsockopt() -> Any:
    """libc's getsockopt, or None where there is none to call (not a POSIX libc)."""
    # No argtypes: ctypes converts Python ints to C ints by default, and its argtypes checks
    # doubled the cost of each call.
    try:
        return ctypes.CDLL(None).getsockopt
    except (OSError, AttributeError):
        return None


class ArrivalClock:
    """Reads, per request, how long ago the kernel received its connection's latest bytes.

    getsockopt is called through ctypes on the connection's descriptor, into a buffer kept for
    every call: the socket object uvloop hands out builds a Python socket for each call (with
    a getsockname to check it), which took about 2.7 us per request against about 1.3 us.
    """

    def __init__(self) -> None:
        self._getsockopt = _libc_getsockopt() if _TCP_INFO is not None else None
        self._info = ctypes.create_string_buffer(_TCP_INFO_LEN)
        self._length = ctypes.c_uint32()
        self._length_ref = ctypes.byref(self._length)
        self._unchecked = 0
        self._miss_rate = 0.0

    # The kernel's clock tick (4 ms at HZ=250): its readings are whole ticks, so only a
    # reading two ticks over the lag shows for sure that the lag missed part of a wait.
    TICK_S: ClassVar[float] = 0.004
    # While the lag is trusted, one request in SAMPLE_EVERY is checked against the kernel.
    SAMPLE_EVERY: ClassVar[int] = 16
    # The lag is doubted while more than DOUBT_FROM of the checked requests (a moving average
    # of weight MISS_WEIGHT) found it short: every request is then read from the kernel.
    MISS_WEIGHT: ClassVar[float] = 1 / 64
    DOUBT_FROM: ClassVar[float] = 0.005

    def wait_seconds(self, transport: asyncio.BaseTransport | None, loop_lag_s: float) -> float:
        """How long the request on this connection sat unread before its handler ran.

        The loop's lag counts a wait that made its ticks late, but not one between two ticks:
        a frontend that shares its core with a model is taken off the CPU, and the requests
        that came meanwhile are read before the next tick runs. There, at 80% of the MLP's
        capacity, the lag missed 7 to 17 ms of a request's wait at the 99th percentile, the
        kernel 4 ms (its tick). Yet the kernel's reading costs the no-op frontend about 6 us
        per request at 11,000 requests per second (7% of its time), and a frontend alone on
        its core keeps its lag close to the truth. So the lag is used while the loop keeps up
        (under a tick) and a sample of requests checked against the kernel bears it out;
        otherwise the kernel is asked for every request, which checks the lag each time, so
        the lag is trusted again once it stops falling short. Where the socket cannot tell
        (not TCP, not Linux), the lag stands.
        """
        keeping_up = loop_lag_s < self.TICK_S
        if keeping_up and self._miss_rate <= self.DOUBT_FROM:
            self._unchecked += 1
            if self._unchecked < self.SAMPLE_EVERY:
                return loop_lag_s
            self._unchecked = 0
        measured_s = self.unread_seconds(transport)
        if measured_s is None:
            return loop_lag_s
        if keeping_up:
            missed = measured_s - loop_lag_s >= 2 * self.TICK_S
            self._miss_rate += self.MISS_WEIGHT * (float(missed) - self._miss_rate)
        return measured_s

    def unread_seconds(self, transport: asyncio.BaseTransport | None) -> float | None:
        """Seconds since the kernel received the last bytes of the request on this connection,
        or None where the socket cannot tell (not TCP, not Linux, or already closed).

        The kernel counts in clock ticks (4 ms at HZ=250), so one reading can be off by a
        tick either way, but its mean is right: a request read a tenth of a tick after it
        arrived reads one tick in one case of ten and zero otherwise. A client sends its next
        request on a connection after the previous answer, so the last data received is this
        request's; one that pipelines gets the age of its latest request, which never
        overstates the wait.
        """
        if self._getsockopt is None or transport is None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        self._length.value = _TCP_INFO_LEN
        # A Unix socket or a closed descriptor fails the call: no TCP_INFO there.
        failed = self._getsockopt(
            sock.fileno(),
            socket.IPPROTO_TCP,
            _TCP_INFO,
            self._info,
            self._length_ref,
        )
        if failed or self._length.value < _TCP_INFO_LEN:
            return None
        (millis,) = _LAST_DATA_RECV.unpack_from(self._info, _LAST_DATA_RECV_OFFSET)
        return float(millis) / 1000.0
