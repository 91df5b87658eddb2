"""How long a request sat unread: the kernel's time since its connection last received data."""

from __future__ import annotations

import asyncio
import socket
import struct

# struct tcp_info (linux/tcp.h): eight one-byte fields, eleven u32s, then tcpi_last_data_recv,
# in milliseconds. The layout only ever grows at its end, so the offset holds on every kernel.
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 52
_TCP_INFO_LEN = _LAST_DATA_RECV_OFFSET + _LAST_DATA_RECV.size
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def unread_seconds(transport: asyncio.BaseTransport | None) -> float | None:
    """Seconds since the kernel received the last bytes of the request on this connection,
    or None where the socket cannot tell (not TCP, not Linux, or already closed).

    The kernel counts in clock ticks (4 ms at HZ=250), so one reading can be off by a tick
    either way, but its mean is right: a request read a tenth of a tick after it arrived reads
    one tick in one case of ten and zero otherwise. A client sends its next request on a
    connection after the previous answer, so the last data received is this request's; one
    that pipelines gets the age of its latest request, which never overstates the wait.
    """
    if _TCP_INFO is None or transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    (millis,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_OFFSET)
    return float(millis) / 1000.0
