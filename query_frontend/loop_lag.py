"""The event loop's lag: how long a request may have sat unread, where the kernel cannot say."""

from __future__ import annotations

import asyncio


class LoopLag:
    """A tick every interval_s; how late the latest tick ran is the lag.

    A request's SLO clock starts when its handler runs, but the client's started earlier: the
    request waited in its socket while the loop was busy with other work, or while the process
    was off the CPU. A tick due during that time ran late by about as much, so subtracting the
    lag from a request's start counts that wait against its SLO. It is only the fallback, for
    sockets whose kernel cannot say when their bytes came (query_frontend.arrival): the lag
    misses waits that end before its next tick runs.
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
