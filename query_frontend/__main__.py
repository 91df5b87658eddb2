"""Runs the query frontend: settings and logging, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from aiohttp import web

from query_frontend.server import WATCHER_KEY, create_app
from query_frontend.settings import FrontendSettings

logger = logging.getLogger("query_frontend")


async def serve(settings: FrontendSettings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()  # ends the cleanup_ctx tasks before the error propagates
        raise
    # With port 0 the OS picked the port: report the one actually bound.
    port = int(runner.addresses[0][1])
    if settings.ready_fd is not None:
        # Ready means routing: the first read of the cluster state has been applied.
        await app[WATCHER_KEY].synced.wait()
        os.write(settings.ready_fd, f"ready {port}\n".encode())
        os.close(settings.ready_fd)
    logger.info("query frontend listening on %s:%d", settings.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("query frontend shutting down")
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Clipper query frontend (POST /<app>/predict)")
    parser.add_argument("--port", type=int)
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
    settings = FrontendSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
