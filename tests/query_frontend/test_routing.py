"""The cluster watcher: a query it checks for is not held long without Redis, and a state it
cannot apply does not stop it."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from clipper_admin.container_manager import find_unbound_port
from management.store import ClusterState, Store
from query_frontend.routing import ClusterWatcher


async def test_a_check_for_a_newer_state_gives_up_after_a_second_without_redis() -> None:
    # The client's default retries: about 4 s before a refused connection is an error.
    redis = aioredis.Redis(port=find_unbound_port())
    watcher = ClusterWatcher(
        Store(redis), lambda state: None, resync_interval_s=1.0, frontend_id="test"
    )
    try:
        started = time.monotonic()
        await watcher.ensure_fresh()
        assert time.monotonic() - started < 2.5
        assert not watcher.synced.is_set()
    finally:
        await redis.aclose()


async def test_a_state_that_cannot_be_applied_does_not_stop_the_watcher(
    redis_server: tuple[str, int],
) -> None:
    host, port = redis_server
    redis = aioredis.Redis(host=host, port=port)
    applied: list[int] = []

    def apply(state: ClusterState) -> None:
        applied.append(state.generation)
        if len(applied) == 1:
            raise ValueError("a record this frontend cannot read")

    watcher = ClusterWatcher(Store(redis), apply, resync_interval_s=60.0, frontend_id="test")
    watcher.start()
    try:
        # After its backoff it reads the state again, rather than routing by a frozen one.
        async with asyncio.timeout(5):
            await watcher.synced.wait()
        assert applied[1:]
    finally:
        async with asyncio.timeout(5):
            await watcher.stop()
        await redis.aclose()


@pytest.mark.parametrize("after_applies", [1, 2, 3])
async def test_the_watcher_stops_whatever_it_was_reading(
    redis_server: tuple[str, int], after_applies: int
) -> None:
    # Stopped while it reads the state, or right after: each state applied announces a change,
    # which the watcher reads in turn.
    host, port = redis_server
    redis = aioredis.Redis(host=host, port=port)
    store = Store(redis)
    applied = asyncio.Event()
    count = 0
    announcing: set[asyncio.Task[int]] = set()

    def apply(state: ClusterState) -> None:
        nonlocal count
        count += 1
        if count == after_applies:
            applied.set()
        else:
            task = asyncio.get_running_loop().create_task(store.notify_changed("apps"))
            announcing.add(task)
            task.add_done_callback(announcing.discard)

    watcher = ClusterWatcher(store, apply, resync_interval_s=60.0, frontend_id="test")
    watcher.start()
    try:
        async with asyncio.timeout(5):
            await applied.wait()
            await watcher.stop()
    finally:
        await redis.aclose()
