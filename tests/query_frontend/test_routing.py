"""The cluster watcher with its Redis gone: a query it checks for is not held for long."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from clipper_admin.container_manager import find_unbound_port
from management.store import Store
from query_frontend.routing import ClusterWatcher


async def test_a_check_for_a_newer_state_gives_up_after_a_second_without_redis() -> None:
    # The client's default retries: about 4 s before a refused connection is an error.
    redis = aioredis.Redis(port=find_unbound_port())
    watcher = ClusterWatcher(Store(redis), lambda state: None, resync_interval_s=1.0)
    try:
        started = time.monotonic()
        await watcher.ensure_fresh()
        assert time.monotonic() - started < 2.5
        assert not watcher.synced.is_set()
    finally:
        await redis.aclose()
