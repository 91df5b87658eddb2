"""How long a request sat unread: the kernel's time since its connection last received data,
or the event loop's lag while the loop keeps up and the SLO allows it."""

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
        self._behind = False

    # The kernel's own resolution (a clock tick, 4 ms at HZ=250): under it, asking the kernel
    # is no more exact than the loop's lag.
    ASK_KERNEL_FROM_S: ClassVar[float] = 0.004
    # A reading under two ticks: the bytes came less than a tick before they were read.
    FRESH_BELOW_S: ClassVar[float] = 2 * ASK_KERNEL_FROM_S

    def wait_seconds(
        self, transport: asyncio.BaseTransport | None, loop_lag_s: float, exact: bool = False
    ) -> float:
        """How long the request on this connection sat unread before its handler ran.

        `exact`: the kernel is asked whatever the lag, as a tight SLO needs. The lag misses
        many waits: it changes only when its tick runs, and the loop runs its timers only
        between passes over the sockets that are ready, so requests read right after a wait
        (the process off the CPU while a model's replica had the core, or the loop busy with
        others) still see the lag of the tick before it. Per-request timestamps at 120% of the
        MLP's capacity (SLO 50 ms), the client's clock joined with the frontend's: most of the
        answers that reached their client after the SLO had sat 4 to 20 ms longer in their
        socket than the lag said.

        Otherwise, while the loop keeps up (its lag under ASK_KERNEL_FROM_S), the lag is the
        answer: the system call cost the no-op frontend a tenth of its rate at c=64 (8 of 10
        alternating rounds), more than the call's own 2% of its CPU. Once the loop falls
        behind, the kernel says when each request's bytes came (where it cannot tell, the lag
        stands), until a request read after an on-time tick is fresh. An on-time tick alone
        does not end it: after a stall the loop reads the requests that piled up over several
        ticks, and the ticks between them run on time though the requests still read have
        waited the whole stall.
        """
        keeping_up = loop_lag_s < self.ASK_KERNEL_FROM_S
        if keeping_up and not self._behind and not exact:
            return loop_lag_s
        measured_s = self.unread_seconds(transport)
        if exact:
            return loop_lag_s if measured_s is None else measured_s
        self._behind = True
        if measured_s is None:
            self._behind = not keeping_up
            return loop_lag_s
        if keeping_up and measured_s < self.FRESH_BELOW_S:
            self._behind = False
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
