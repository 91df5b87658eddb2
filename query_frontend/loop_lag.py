"""The event loop's lag: about how long a request may have sat unread before the frontend saw it."""

from __future__ import annotations

import asyncio


class LoopLag:
    """A tick every interval_s; how late the latest tick ran is the lag.

    A request's SLO clock starts when its handler runs, but the client's started earlier: the
    request waited in its socket while the loop was busy with other work, or while the process
    was off the CPU. A tick due during that time ran late by about as much, so subtracting the
    lag from a request's start counts that wait against its SLO. While the lag is small it is
    the measure for SLOs loose enough to allow it (query_frontend.arrival); after a stall the
    kernel is asked instead, since a request read right after it sees the whole stall's lag
    though it may have come at its end.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self._lag_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def seconds(self) -> float:
        return self._lag_s

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._lag_s = max(0.0, now - self._due)
        self._due = now + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)
