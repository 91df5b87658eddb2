"""Makes a replica known through Redis with a heartbeat, and removes it when the replica stops."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import redis.asyncio as aioredis

from management.store import ReplicaRecord, Store

logger = logging.getLogger(__name__)

# The record expires by itself within the ttl, so a replica stopping while Redis is down need
# not wait out the client's own retries (about 4 s) to say that it leaves.
DEREGISTER_TIMEOUT_S = 1.0


class ReplicaRegistration:
    """While entered, the replica's record is refreshed every interval and expires ttl after a stop.

    A replica that dies without leaving therefore drops out of routing within ttl_s.
    """

    def __init__(
        self,
        store: Store,
        model_name: str,
        model_version: str,
        input_type: str,
        address: str,
        pid: int,
        heartbeat_interval_s: float,
        ttl_s: float,
        metrics_address: str = "",
    ) -> None:
        self._store = store
        self._args = (model_name, model_version, input_type, address, pid)
        self._metrics_address = metrics_address
        self._interval_s = heartbeat_interval_s
        self._ttl_s = ttl_s
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.replica: ReplicaRecord | None = None

    async def __aenter__(self) -> ReplicaRecord:
        self.replica = await self._store.register_replica(
            *self._args, ttl_s=self._ttl_s, metrics_address=self._metrics_address
        )
        logger.info(
            "registered as replica %d of %s:%s at %s",
            self.replica.replica_id,
            self.replica.model_name,
            self.replica.model_version,
            self.replica.address,
        )
        self._task = asyncio.create_task(self._heartbeat(self.replica))
        return self.replica

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        if self._task is not None:
            # Not waited for if a heartbeat is in flight: with Redis down, it would go on
            # retrying for about 4 s. wait() rather than await: the cancellation is ours.
            self._task.cancel()
            await asyncio.wait([self._task])
        if self.replica is not None:
            try:
                async with asyncio.timeout(DEREGISTER_TIMEOUT_S):
                    await self._store.deregister_replica(self.replica)
            except (aioredis.RedisError, TimeoutError) as e:
                logger.warning(
                    "could not deregister (the record expires by itself): %s", str(e) or "timed out"
                )

    async def _heartbeat(self, replica: ReplicaRecord) -> None:
        while not self._stopped.is_set():
            try:
                # Not wait_for, which in Python 3.11 can swallow a racing cancellation.
                async with asyncio.timeout(self._interval_s):
                    await self._stopped.wait()
                return
            except TimeoutError:
                pass
            try:
                await self._store.refresh_replica(replica, self._ttl_s)
            except aioredis.RedisError as e:
                logger.warning("heartbeat to Redis failed, retrying: %s", e)
