"""Runs the management service: settings and logging, then serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import ValidationError

from management.server import create_app
from management.setting_types import settings_error
from management.settings import ManagementSettings
from management.store import Store

logger = logging.getLogger("management")


async def serve(settings: ManagementSettings) -> None:
    redis = aioredis.Redis(
        host=settings.redis_host, port=settings.redis_port, decode_responses=True
    )
    runner = web.AppRunner(
        create_app(Store(redis), settings.frontend_sync_timeout_s), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()  # ends the cleanup_ctx tasks before the error propagates
        raise
    # With port 0 the OS picked the port: report the one actually bound.
    port = int(runner.addresses[0][1])
    if settings.ready_fd is not None:
        os.write(settings.ready_fd, f"ready {port}\n".encode())
        os.close(settings.ready_fd)
    logger.info("management service listening on %s:%d", settings.host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("management service shutting down")
    await runner.cleanup()
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="Clipper management service (/admin/*)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--redis_ip", "--redis-host", dest="redis_host")
    parser.add_argument("--redis_port", "--redis-port", dest="redis_port", type=int)
    args = parser.parse_args()
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ManagementSettings(**overrides)
    except ValidationError as e:
        sys.exit(settings_error(e, "CLIPPER_MGMT_"))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
