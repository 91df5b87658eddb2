"""The keeper process: restarts with a growing delay, stops with its command, readiness once."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import wait_for


def _keeper(
    *command: str, ready_fd_env: str | None = None, **popen: object
) -> subprocess.Popen[str]:
    flags = ["--ready-fd-env", ready_fd_env] if ready_fd_env else []
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "clipper_admin.keeper", *flags, "--", *command],
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_command_that_exits_is_started_again_after_a_growing_delay(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n')"
    keeper = _keeper(sys.executable, "-c", script)
    try:
        wait_for(lambda: len(_lines(starts)) >= 6, 15, "six starts")
        times = [float(t) for t in _lines(starts)]
        gaps = [b - a for a, b in itertools.pairwise(times[:6])]
        # 0.1 s, doubled each time: a command that keeps exiting is not run in a tight loop.
        assert all(gap >= 0.1 * 2**i for i, gap in enumerate(gaps)), gaps
        # Asked to stop while it waits 3.2 s to start the command again: it stops at once.
        wait_for(lambda: not psutil.Process(keeper.pid).children(), 3, "the sixth run's end")
        asked = time.monotonic()
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(10) == 0
        assert time.monotonic() - asked < 1.0
    finally:
        keeper.kill()
        _, stderr = keeper.communicate()
    assert "exited with code 0" in stderr
    assert len(_lines(starts)) == 6


def test_a_stop_is_passed_on_and_the_keeper_exits_with_its_command(tmp_path: Path) -> None:
    events = tmp_path / "events"
    script = (
        "import signal, sys, time\n"
        f"log = open({str(events)!r}, 'a', buffering=1)\n"
        "def stop(*_): log.write('stopped\\n'); sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "log.write('started\\n')\n"
        "while True: time.sleep(1)\n"
    )
    keeper = _keeper(sys.executable, "-c", script)
    try:
        wait_for(lambda: _lines(events) == ["started"], 10, "the command to start")
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(10) == 7
    finally:
        keeper.kill()
        keeper.communicate()
    assert _lines(events) == ["started", "stopped"]  # not started again


def test_the_first_run_is_ready_for_the_parent_and_later_runs_keep_its_port(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    # A service asked for port 0 binds one the OS gives it (5123 here), and reports it.
    script = (
        "import os, sys\n"
        "port = sys.argv[sys.argv.index('--port') + 1]\n"
        f"open({str(runs)!r}, 'a').write(port + '\\n')\n"
        "bound = '5123' if port == '0' else port\n"
        "os.write(int(os.environ['READY_FD']), f'ready {bound}\\n'.encode())\n"
        "sys.exit(1)\n"
    )
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "READY_FD": str(write_fd)}
    keeper = subprocess.Popen(
        [sys.executable, "-m", "clipper_admin.keeper", "--ready-fd-env", "READY_FD",
         "--port-arg=--port", "--", sys.executable, "-c", script, "--port", "0"],
        stderr=subprocess.PIPE, env=env, pass_fds=(write_fd,),
    )  # fmt: skip
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as ready:
            # The ready line, then the end of the pipe once the first run exited: whoever
            # waits on it learns that the process died, and is not left waiting.
            assert ready.read() == b"ready 5123\n"
        wait_for(lambda: len(_lines(runs)) >= 3, 10, "three runs")
        assert _lines(runs)[:3] == ["0", "5123", "5123"]
    finally:
        keeper.kill()
        keeper.communicate()
