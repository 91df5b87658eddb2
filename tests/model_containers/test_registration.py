"""A replica's registration in a real Redis: listed while entered, announced when its record
comes back, gone when it stops."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import redis.asyncio as aioredis

from clipper_admin.container_manager import find_unbound_port
from management.store import Store
from model_containers.registration import ReplicaRegistration
from tests.conftest import start_redis_server


def _registration(store: Store) -> ReplicaRegistration:
    return ReplicaRegistration(
        store, "m", "1", "doubles", "127.0.0.1:7001", os.getpid(),
        heartbeat_interval_s=0.1, ttl_s=5.0,
    )  # fmt: skip


async def test_a_replica_is_listed_while_it_runs_and_leaves_when_it_stops(
    clean_redis: tuple[str, int],
) -> None:
    redis = aioredis.Redis(host=clean_redis[0], port=clean_redis[1], decode_responses=True)
    store = Store(redis)
    try:
        async with _registration(store) as replica:
            await asyncio.sleep(0.3)  # a few heartbeats
            assert [r.address for r in await store.list_replicas()] == ["127.0.0.1:7001"]
            assert replica.model_name == "m"
        assert await store.list_replicas() == []
    finally:
        await redis.aclose()


async def test_a_replica_stopping_while_redis_is_down_does_not_wait_out_the_retries(
    tmp_path: Path,
) -> None:
    port = find_unbound_port()
    process = await start_redis_server(port, tmp_path)
    redis = aioredis.Redis(port=port, decode_responses=True)
    try:
        async with _registration(Store(redis)):
            process.terminate()
            await process.wait()
            await asyncio.sleep(0.3)  # a heartbeat is now retrying against the dead Redis
            # redis-py retries a refused connection for about 4 s, for the heartbeat as for
            # the deregistration; the record expires by itself.
            started = time.monotonic()
        assert time.monotonic() - started < 3.0
    finally:
        await redis.aclose()
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def test_a_record_gone_while_the_replica_runs_comes_back_announced(
    clean_redis: tuple[str, int],
) -> None:
    """As after Redis restarts once the record's ttl ran out: the next heartbeat writes it
    again and tells the frontends, which would otherwise route around the replica until their
    periodic resync."""
    redis = aioredis.Redis(host=clean_redis[0], port=clean_redis[1], decode_responses=True)
    store = Store(redis)

    async def next_change(pubsub: aioredis.client.PubSub) -> str:
        # get_message returns None for each subscription confirmation it skips, so it is
        # asked again until a change comes; the caller bounds the wait.
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                return str(message["data"])

    try:
        async with _registration(store) as replica, store.subscribe_changes() as pubsub:
            await store.deregister_replica(replica)
            # The deregistration's own announcement, then the heartbeat's.
            assert await asyncio.wait_for(next_change(pubsub), 2.0) == "replicas"
            assert await asyncio.wait_for(next_change(pubsub), 2.0) == "replicas"
            assert [r.address for r in await store.list_replicas()] == ["127.0.0.1:7001"]
    finally:
        await redis.aclose()
