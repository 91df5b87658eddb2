"""The restart policy of a local cluster's model replica: runs it, and runs it again if it exits.

Docker restarts a model container that dies (the `unless-stopped` policy); the embedded cluster
runs each replica under this small process instead, so a replica that crashes (a segfault in
native code, the OOM killer) comes back by itself in either. Asked to stop (SIGTERM or SIGINT),
the keeper passes the signal on, waits for the replica and exits with it.

    python -m clipper_admin.keeper [--ready-fd-env NAME] -- <replica's argv>
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

logger = logging.getLogger(__name__)

# Docker's restart policy, so a replica comes back alike in either cluster: 0.1 s, doubled
# after each exit that came soon after a start.
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 30.0
# A replica that ran this long before it exited is started again after the first delay, not
# the grown one: it crashed once, it is not crashing in a loop.
STABLE_AFTER_S = 10.0


class Keeper:
    """Runs argv until asked to stop, starting it again after each exit, with a growing delay."""

    def __init__(self, argv: list[str], env: dict[str, str], ready_fd_env: str | None) -> None:
        self.argv = argv
        self.env = env
        self.ready_fd_env = ready_fd_env
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stops the replica and the keeper; safe to call from a signal handler."""
        self._stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        delay_s = FIRST_DELAY_S
        while True:
            started = time.monotonic()
            returncode = self._run_once()
            if self._stopping.is_set():
                return returncode
            ran_s = time.monotonic() - started
            if ran_s >= STABLE_AFTER_S:
                delay_s = FIRST_DELAY_S
            logger.warning(
                "The replica exited with code %d after %.1f s: starting it again in %.1f s",
                returncode,
                ran_s,
                delay_s,
            )
            if self._stopping.wait(delay_s):
                return returncode
            delay_s = min(2 * delay_s, MAX_DELAY_S)

    def _run_once(self) -> int:
        env = dict(self.env)
        ready_fd = self._take_ready_fd()
        self._child = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=(ready_fd,) if ready_fd is not None else (),
        )
        if ready_fd is not None:
            # Only the replica holds the pipe now: its exit before it is ready is an EOF for
            # whoever waits on the other end.
            os.close(ready_fd)
        if self._stopping.is_set():  # a stop that came while the replica was being started
            self._child.send_signal(signal.SIGTERM)
        return self._child.wait()

    def _take_ready_fd(self) -> int | None:
        """The readiness pipe goes to the first replica only: nobody waits on later ones."""
        if self.ready_fd_env is None or self.ready_fd_env not in self.env:
            return None
        return int(self.env.pop(self.ready_fd_env))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipper_admin.keeper")
    parser.add_argument("--ready-fd-env", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s keeper[%(process)d]: %(message)s"
    )
    keeper = Keeper(command, dict(os.environ), args.ready_fd_env)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        keeper.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    returncode = keeper.run()
    # A replica ended by a signal: the shell's code for it (143 for SIGTERM), not -15 & 0xff.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main())
