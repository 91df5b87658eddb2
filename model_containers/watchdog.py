"""The replica's watchdog: reports a predict call that has run for longer than its time limit.

A model stuck in predict (a deadlock, an endless loop, a wait on a dead service) cannot be
interrupted from Python, and a replica that never answers takes its share of every model's
batches only to fail them. The replica's answer to being stuck is to exit, so that its keeper
(embedded cluster) or Docker's restart policy starts a fresh one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

logger = logging.getLogger(__name__)


class PredictWatchdog:
    """Times every predict call it is entered around; calls on_stuck(seconds) from its own
    thread when one runs past timeout_s. A call costs a lock, and a wake-up of the watchdog
    only when it was idle: under load it wakes once per timeout_s at most."""

    def __init__(self, timeout_s: float, on_stuck: Callable[[float], None]) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        self._on_stuck = on_stuck
        self._cond = threading.Condition()
        self._started_at: float | None = None  # of the call in progress
        self._idle = True
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="predict-watchdog", daemon=True)
        self._thread.start()

    def __enter__(self) -> None:
        with self._cond:
            self._started_at = time.monotonic()
            if self._idle:
                self._cond.notify()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._started_at = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                started_at = self._started_at
                if started_at is None:
                    self._idle = True
                    self._cond.wait()
                    continue
                self._idle = False
                ran_s = time.monotonic() - started_at
                if ran_s >= self.timeout_s:
                    self._on_stuck(ran_s)
                    return
                # Until this call's limit; a later call, started meanwhile, is looked at then.
                self._cond.wait(self.timeout_s - ran_s)
