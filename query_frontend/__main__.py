"""Runs the query frontend: settings and logging, then serve (or supervise workers) until
SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys

from aiohttp import web
from pydantic import ValidationError

from management.event_loop import loop_factory
from management.setting_types import settings_error
from query_frontend.native import compiled_modules, stale_modules
from query_frontend.predict_site import PredictSite
from query_frontend.server import (
    CLIENT_MAX_SIZE,
    METRICS_KEY,
    PREDICT_CALL_KEY,
    WATCHER_KEY,
    create_app,
    create_internal_app,
)
from query_frontend.settings import FrontendSettings
from query_frontend.supervisor import supervise

logger = logging.getLogger("query_frontend")

# Each request allocates a few hundred objects, so the default threshold (700) ran a young
# collection every few requests; a higher one cuts the collector's share of the CPU.
GC_YOUNG_THRESHOLD = 20000
GC_OLDER_THRESHOLD = 20
# Open files the frontend asks for at most, when the hard limit allows (see
# raise_open_files_limit): far more connections than one process can serve.
OPEN_FILES_CAP = 1 << 20


async def serve(settings: FrontendSettings) -> None:
    """Serves until SIGTERM or SIGINT: alone, or as one worker of a supervisor's port."""
    internal_sock = None
    peer_ports: list[int] = []
    if settings.internal_fd is not None:
        internal_sock = socket.socket(fileno=settings.internal_fd)
        own = internal_sock.getsockname()[1]
        peer_ports = [int(p) for p in settings.peer_ports.split(",") if p and int(p) != own]
    app = create_app(settings, peer_ports)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listen = None if settings.listen_fd is None else socket.socket(fileno=settings.listen_fd)
    site: web.BaseSite
    if settings.predict_protocol == "fast":
        site = PredictSite(
            runner,
            app[PREDICT_CALL_KEY],
            host=settings.host,
            port=settings.port,
            sock=listen,
            max_body_bytes=CLIENT_MAX_SIZE,
        )
    elif listen is not None:
        site = web.SockSite(runner, listen)
    else:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()  # ends the cleanup_ctx tasks before the error propagates
        raise
    internal_runner = None
    if internal_sock is not None:
        internal_runner = web.AppRunner(create_internal_app(app[METRICS_KEY]), access_log=None)
        await internal_runner.setup()
        await web.SockSite(internal_runner, internal_sock).start()
    # With port 0 the OS picked the port: report the one actually bound.
    port = int(runner.addresses[0][1])
    if settings.ready_fd is not None:
        # Ready means routing: the first read of the cluster state has been applied.
        await app[WATCHER_KEY].synced.wait()
        os.write(settings.ready_fd, f"ready {port}\n".encode())
        os.close(settings.ready_fd)
    logger.info("query frontend listening on %s:%d", settings.host, port)
    logger.info("compiled modules: %s", ", ".join(compiled_modules()) or "none")
    if stale := stale_modules():
        logger.warning(
            "compiled modules older than their source, which does not run: %s (rebuild them "
            "with scripts/setup)",
            ", ".join(stale),
        )
    # What startup built lives as long as the process: frozen, the collector stops rescanning
    # it, so that an older-generation collection costs a fraction as much and pauses less.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lifeline_fd = settings.lifeline_fd
    if lifeline_fd is not None:
        # Readable only at its end: the supervisor is gone, so no one would stop this worker.
        def orphaned() -> None:
            loop.remove_reader(lifeline_fd)
            stop.set()

        loop.add_reader(lifeline_fd, orphaned)
    await stop.wait()
    logger.info("query frontend shutting down")
    if internal_runner is not None:
        await internal_runner.cleanup()
    await runner.cleanup()


def raise_open_files_limit() -> tuple[int, int]:
    """Raises the soft limit on open files to the hard one; returns (before, after).

    Each client connection holds a file, and a shell's usual soft limit, 1024, made the
    frontend refuse clients past about a thousand connections at once (Docker's is higher).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CAP)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


def main() -> None:
    parser = argparse.ArgumentParser(description="Clipper query frontend (POST /<app>/predict)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int, help="worker processes sharing the port")
    parser.add_argument("--redis_ip", "--redis-host", dest="redis_host")
    parser.add_argument("--redis_port", "--redis-port", dest="redis_port", type=int)
    parser.add_argument(
        "--prediction_cache_size",
        "--prediction-cache-size-bytes",
        dest="prediction_cache_size_bytes",
        type=int,
    )
    args = parser.parse_args()
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = FrontendSettings(**overrides)
    except ValidationError as e:
        sys.exit(settings_error(e, "CLIPPER_QF_"))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    before, after = raise_open_files_limit()
    if after != before:
        logger.info("raised the limit on open files (connections) from %d to %d", before, after)
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        if settings.workers > 1 and settings.listen_fd is None:
            runner.run(supervise(settings))
        else:
            runner.run(serve(settings))


if __name__ == "__main__":
    main()
