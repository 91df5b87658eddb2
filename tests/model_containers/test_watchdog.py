"""PredictWatchdog: a call past its limit is reported once; calls within it never are."""

from __future__ import annotations

import threading
import time

import pytest

from model_containers.watchdog import PredictWatchdog


def test_a_call_past_its_limit_is_reported_while_it_runs() -> None:
    reported: list[float] = []
    stuck = threading.Event()

    def on_stuck(ran_s: float) -> None:
        reported.append(ran_s)
        stuck.set()

    watchdog = PredictWatchdog(0.3, on_stuck)
    # Calls within the limit, for longer in all than the limit: none is reported.
    ends = time.monotonic() + 0.8
    while time.monotonic() < ends:
        with watchdog:
            time.sleep(0.05)
    assert not stuck.wait(0.5)  # and none once idle
    release = threading.Event()

    def call() -> None:
        with watchdog:
            release.wait()

    thread = threading.Thread(target=call)
    thread.start()
    try:
        assert stuck.wait(5)  # reported while the call still runs
    finally:
        release.set()
        thread.join()
    assert len(reported) == 1 and reported[0] >= 0.3


def test_a_call_that_ended_is_not_reported() -> None:
    stuck = threading.Event()
    watchdog = PredictWatchdog(0.2, lambda _: stuck.set())
    with watchdog:
        time.sleep(0.1)
    assert not stuck.wait(0.4)
    watchdog.close()


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PredictWatchdog(0, lambda _: None)
