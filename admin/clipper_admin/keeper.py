"""The restart policy of a local cluster's processes: runs one, and runs it again if it exits.

Docker restarts a container that dies (the `unless-stopped` policy); the embedded cluster runs
each replica and service under this small process instead, so one that crashes (a segfault in
native code, the OOM killer) comes back by itself in either. Asked to stop (SIGTERM or SIGINT),
the keeper passes the signal on, waits for its process and exits with it.

    python -m clipper_admin.keeper [--ready-fd-env NAME] [--port-arg=FLAG] -- <argv>

With --ready-fd-env, each run gets a readiness pipe of the keeper's in that variable, and the
first run's "ready <port>" line goes on to the pipe the keeper itself was given there. With
--port-arg, the runs after the first get the port it reported as the value of that flag, so a
service started on port 0 comes back on the address its clients know.
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

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        ready_fd_env: str | None = None,
        port_arg: str | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.ready_fd_env = ready_fd_env
        self.port_arg = port_arg
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._reported_port: str | None = None

    def stop(self) -> None:
        """Stops the process and the keeper; safe to call from a signal handler."""
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
                "%s exited with code %d after %.1f s: starting it again in %.1f s",
                " ".join(self.argv[:3]),
                returncode,
                ran_s,
                delay_s,
            )
            if self._stopping.wait(delay_s):
                return returncode
            delay_s = min(2 * delay_s, MAX_DELAY_S)

    def _run_once(self) -> int:
        env = dict(self.env)
        relay_to = self._take_ready_fd()
        read_fd = write_fd = None
        if self.ready_fd_env is not None:
            read_fd, write_fd = os.pipe()
            env[self.ready_fd_env] = str(write_fd)
        self._child = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=(write_fd,) if write_fd is not None else (),
        )
        if write_fd is not None:
            # Only the child holds the pipe now: its exit before it is ready is an EOF.
            os.close(write_fd)
        if read_fd is not None:
            threading.Thread(
                target=self._relay_ready, args=(read_fd, relay_to), name="ready", daemon=True
            ).start()
        if self._stopping.is_set():  # a stop that came while the child was being started
            self._child.send_signal(signal.SIGTERM)
        return self._child.wait()

    def _take_ready_fd(self) -> int | None:
        """The keeper's own readiness pipe, for the first run only: nobody waits on later ones."""
        if self.ready_fd_env is None or self.ready_fd_env not in self.env:
            return None
        return int(self.env.pop(self.ready_fd_env))

    def _argv(self) -> list[str]:
        argv = list(self.argv)
        if self.port_arg is not None and self._reported_port is not None:
            at = argv.index(self.port_arg) + 1
            argv[at] = self._reported_port
        return argv

    def _relay_ready(self, read_fd: int, relay_to: int | None) -> None:
        """Reads a run's ready line, keeps its port, and passes the first run's on."""
        line = b""
        try:
            with os.fdopen(read_fd, "rb") as ready:
                line = ready.readline()
            fields = line.split()
            if len(fields) == 2 and fields[0] == b"ready":
                self._reported_port = fields[1].decode()
            if relay_to is not None and line:
                os.write(relay_to, line)
        finally:
            if relay_to is not None:
                os.close(relay_to)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipper_admin.keeper")
    parser.add_argument("--ready-fd-env", default=None)
    parser.add_argument("--port-arg", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s keeper[%(process)d]: %(message)s"
    )
    if args.port_arg is not None and args.port_arg not in command[:-1]:
        parser.error(f"{args.port_arg} is not in the command")
    keeper = Keeper(command, dict(os.environ), args.ready_fd_env, args.port_arg)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        keeper.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    returncode = keeper.run()
    # A process ended by a signal: the shell's code for it (143 for SIGTERM), not -15 & 0xff.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main())
