"""The store's record of what each query frontend routes by, and the wait for all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from management.store import Store


@pytest.fixture
async def store(clean_redis: tuple[str, int]) -> AsyncIterator[Store]:
    redis = aioredis.Redis(host=clean_redis[0], port=clean_redis[1], decode_responses=True)
    yield Store(redis)
    await redis.aclose()


async def test_with_no_frontend_a_change_waits_for_none(store: Store) -> None:
    generation = await store.notify_changed("models")
    started = time.monotonic()
    assert await store.await_frontends(generation, timeout_s=5.0) == []
    assert time.monotonic() - started < 1.0


async def test_a_change_waits_until_every_frontend_routes_by_it(store: Store) -> None:
    generation = await store.notify_changed("models")
    await store.report_applied("a", generation, ttl_s=30.0)
    await store.report_applied("b", generation - 1, ttl_s=30.0)
    assert await store.frontends_behind(generation) == ["b"]
    waiting = asyncio.create_task(store.await_frontends(generation, timeout_s=10.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    reported = time.monotonic()
    await store.report_applied("b", generation + 1, ttl_s=30.0)  # a newer state will do
    async with asyncio.timeout(5):
        assert await waiting == []
    assert time.monotonic() - reported < 1.0


async def test_a_frontend_that_does_not_catch_up_is_waited_for_until_the_timeout(
    store: Store,
) -> None:
    generation = await store.notify_changed("models")
    await store.report_applied("stuck", generation - 1, ttl_s=30.0)
    started = time.monotonic()
    assert await store.await_frontends(generation, timeout_s=0.3) == ["stuck"]
    assert 0.3 <= time.monotonic() - started < 2.0
    assert await store.await_frontends(generation, timeout_s=0) == ["stuck"]


async def test_a_frontend_whose_record_ran_out_or_was_removed_is_not_waited_for(
    store: Store,
) -> None:
    generation = await store.notify_changed("models")
    await store.report_applied("killed", generation - 1, ttl_s=0.1)
    await store.report_applied("stopped", generation - 1, ttl_s=30.0)
    await store.forget_frontend("stopped")
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert await store.await_frontends(generation, timeout_s=5.0) == []
    assert time.monotonic() - started < 1.0
