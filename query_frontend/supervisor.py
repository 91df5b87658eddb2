"""Several query frontend worker processes on one port, each restarted if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from query_frontend.settings import FrontendSettings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 1.0
STOP_TIMEOUT_S = 10.0
# Settings a worker gets from the supervisor itself, not copied from the supervisor's own.
_PER_WORKER = {"workers", "ready_fd", "listen_fd", "internal_fd", "peer_ports", "lifeline_fd"}


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets on one port (port 0: one the OS picks), with SO_REUSEPORT so that the
    kernel spreads new connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(1024)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Worker:
    """One worker process: its sockets outlive it, so a replacement serves the same port."""

    def __init__(
        self, index: int, listen: socket.socket, internal: socket.socket, env: dict[str, str]
    ) -> None:
        self.index = index
        self._listen = listen
        self._internal = internal
        self._env = env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Starts the process and waits until it routes queries."""
        ready_r, ready_w = os.pipe()
        env = {**self._env, "CLIPPER_QF_READY_FD": str(ready_w)}
        fds = (self._listen.fileno(), self._internal.fileno(), ready_w)
        lifeline = int(env["CLIPPER_QF_LIFELINE_FD"])
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "query_frontend", env=env, pass_fds=(*fds, lifeline)
            )
        finally:
            os.close(ready_w)
        line = await _read_line(ready_r, READY_TIMEOUT_S)
        if not line.startswith("ready"):
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            raise RuntimeError(f"worker {self.index} exited before it was ready")
        logger.info("worker %d (pid %d) is ready", self.index, self.process.pid)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            logger.warning(
                "worker %d did not stop within %.0f s: killed", self.index, STOP_TIMEOUT_S
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def keep_running(self) -> None:
        """Restarts the process whenever it exits, until cancelled."""
        while True:
            assert self.process is not None
            code = await self.process.wait()
            logger.warning("worker %d exited with code %s: restarting it", self.index, code)
            while True:
                await asyncio.sleep(RESTART_BACKOFF_S)  # a crash loop must not spin
                try:
                    await self.start()
                    break
                except (OSError, RuntimeError, TimeoutError) as e:
                    logger.error("worker %d could not restart: %s", self.index, e)


async def _read_line(fd: int, timeout_s: float) -> str:
    """One line from a pipe, or "" if its writer closes it first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        async with asyncio.timeout(timeout_s):
            return (await reader.readline()).decode().strip()
    finally:
        transport.close()


def _worker_env(settings: FrontendSettings) -> dict[str, str]:
    """The supervisor's settings, as the environment variables a worker reads them from."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if name not in _PER_WORKER and value is not None:
            env[f"CLIPPER_QF_{name.upper()}"] = str(value)
    return env


async def supervise(settings: FrontendSettings) -> None:
    """Runs settings.workers workers on the port until SIGTERM or SIGINT, then stops them."""
    listens = listening_sockets(settings.host, settings.port, settings.workers)
    port = listens[0].getsockname()[1]
    internals = [listening_sockets("127.0.0.1", 0, 1)[0] for _ in listens]
    # Workers hold the read end; it reads as closed once this process is gone, however it ends.
    lifeline_r, lifeline_w = os.pipe()
    env = {
        **_worker_env(settings),
        "CLIPPER_QF_WORKERS": "1",
        "CLIPPER_QF_PEER_PORTS": ",".join(str(s.getsockname()[1]) for s in internals),
        "CLIPPER_QF_LIFELINE_FD": str(lifeline_r),
    }
    workers = []
    for i, (listen, internal) in enumerate(zip(listens, internals, strict=True)):
        worker_env = {
            **env,
            "CLIPPER_QF_LISTEN_FD": str(listen.fileno()),
            "CLIPPER_QF_INTERNAL_FD": str(internal.fileno()),
        }
        workers.append(Worker(i, listen, internal, worker_env))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    keepers: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(w.start() for w in workers))
        if settings.ready_fd is not None:
            os.write(settings.ready_fd, f"ready {port}\n".encode())
            os.close(settings.ready_fd)
        logger.info("%d query frontend workers on %s:%d", len(workers), settings.host, port)
        keepers = [asyncio.create_task(w.keep_running()) for w in workers]
        await stop.wait()
        logger.info("stopping the query frontend workers")
    finally:
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in workers))
        os.close(lifeline_w)
        os.close(lifeline_r)
        for sock in (*listens, *internals):
            sock.close()
