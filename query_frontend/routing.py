"""The frontend's live view of the cluster: apps, links, versions, and a worker per replica."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from management.input_types import parse_input_type
from management.store import AppRecord, ClusterState, ModelRecord, ReplicaRecord, Store
from query_frontend.batching import (
    BatchObserver,
    BatchPolicy,
    ExpiryObserver,
    ModelQueue,
    NoReplicas,
    ReplicaClient,
    ReplicaWorker,
)

logger = logging.getLogger(__name__)

# How long a query whose app or version is not known here waits for a check of Redis.
ENSURE_FRESH_TIMEOUT_S = 1.0
# The management service waits for every live frontend to route by a change before the call
# that made it returns: this frontend's record of what it routes by is written at each read of
# the state and every HEARTBEAT_S between them, and lasts APPLIED_TTL_S, so a frontend killed
# is waited for no longer than that.
HEARTBEAT_S = 1.0
APPLIED_TTL_S = 3.0

ModelId = tuple[str, str]


def _replica_key(replica: ReplicaRecord) -> str:
    return f"{replica.model_name}:{replica.model_version}:{replica.replica_id}@{replica.address}"


class Router:
    """Applies each new cluster state: queues per model version, workers per replica."""

    def __init__(
        self,
        on_batch: BatchObserver,
        max_adaptive_batch_size: int,
        max_batch_wait_s: float,
        max_queue_len: int,
        on_expired: ExpiryObserver,
    ) -> None:
        self._on_batch = on_batch
        self._on_expired = on_expired
        self._max_adaptive_batch_size = max_adaptive_batch_size
        self._max_batch_wait_s = max_batch_wait_s
        self._max_queue_len = max_queue_len
        self.state = ClusterState(-1, {}, {}, {}, {}, [])
        self._queues: dict[ModelId, ModelQueue] = {}
        self._workers: dict[str, tuple[ModelId, ReplicaWorker]] = {}
        # Replicas this frontend found dead; ignored until Redis no longer lists them.
        self._gone: set[str] = set()
        # Workers retired with a batch still in flight, and the tasks that close them once it
        # is answered, so that close() can end them: no task outlives the app.
        self._retiring: set[ReplicaWorker] = set()
        self._stopping: set[asyncio.Task[None]] = set()

    def app(self, name: str) -> AppRecord | None:
        return self.state.apps.get(name)

    def linked_model(self, app: str) -> str | None:
        links = self.state.links.get(app)
        return links[0] if links else None

    def current_version(self, model: str) -> str | None:
        return self.state.current_versions.get(model)

    def model(self, name: str, version: str) -> ModelRecord | None:
        return self.state.models.get((name, version))

    def queue(self, name: str, version: str) -> ModelQueue | None:
        """The queue of a version that has at least one live replica, else None."""
        return self._queues.get((name, version))

    def num_replicas(self, name: str, version: str) -> int:
        return sum(1 for model_id, _ in self._workers.values() if model_id == (name, version))

    def apply(self, state: ClusterState) -> None:
        self.state = state
        listed = {_replica_key(r): r for r in state.replicas}
        self._gone &= listed.keys()
        wanted = {k: r for k, r in listed.items() if k not in self._gone}
        for key in list(self._workers):
            if key not in wanted:
                self._remove_worker(key)
        for key, replica in wanted.items():
            if key not in self._workers:
                self._add_worker(key, replica)
        for model_id, queue in self._queues.items():
            model = state.models.get(model_id)
            if model is not None:
                queue.policy.set_batch_size(model.batch_size)

    def _add_worker(self, key: str, replica: ReplicaRecord) -> None:
        model_id = (replica.model_name, replica.model_version)
        queue = self._queues.get(model_id)
        if queue is None:
            try:
                input_type = parse_input_type(replica.input_type)
            except ValueError:
                logger.error("replica %s has an unknown input type %r", key, replica.input_type)
                return
            model = self.state.models.get(model_id)
            policy = BatchPolicy(
                model.batch_size if model else -1,
                self._max_adaptive_batch_size,
                self._max_batch_wait_s,
            )
            queue = ModelQueue(*model_id, input_type, policy, self._max_queue_len, self._on_expired)
            self._queues[model_id] = queue
        worker = ReplicaWorker(
            key, queue, ReplicaClient(replica.address), self._on_batch, self.replica_gone
        )
        self._workers[key] = (model_id, worker)
        queue.num_workers += 1
        worker.start()
        logger.info("replica %s joined", key)

    def _remove_worker(self, key: str) -> None:
        model_id, worker = self._workers.pop(key)
        self._queues[model_id].num_workers -= 1
        worker.retire()
        self._retiring.add(worker)
        task = asyncio.get_running_loop().create_task(worker.wait_closed())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        task.add_done_callback(lambda _: self._retiring.discard(worker))
        logger.info("replica %s left", key)
        if self.num_replicas(*model_id) == 0:
            queue = self._queues.pop(model_id)
            queue.fail_all(NoReplicas())

    def replica_gone(self, key: str) -> None:
        """A worker found its replica unreachable: stop routing to it now, not at its TTL."""
        if key in self._workers:
            self._gone.add(key)
            self._remove_worker(key)

    async def close(self) -> None:
        for key in list(self._workers):
            _, worker = self._workers.pop(key)
            await worker.stop()
        for worker in list(self._retiring):
            await worker.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


class ClusterWatcher:
    """Keeps the router current: a full read at start, then one on every change event.

    Redis pub/sub delivers the management service's and the replicas' change events, and the
    expiry of heartbeat keys; a periodic re-read covers anything missed while disconnected.
    After each read, and every HEARTBEAT_S, it records in Redis which state it routes by, under
    frontend_id, for the management service to wait on.
    """

    def __init__(
        self,
        store: Store,
        apply: Callable[[ClusterState], None],
        resync_interval_s: float,
        frontend_id: str,
    ) -> None:
        self._store = store
        self._apply = apply
        self._resync_interval_s = resync_interval_s
        self._frontend_id = frontend_id
        self.synced = asyncio.Event()
        self._generation = -1
        self._refresh_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def refresh(self) -> None:
        async with self._refresh_lock:
            state = await self._store.read_cluster_state()
            self._generation = state.generation
            self._apply(state)
            await self._report_applied()
        self.synced.set()

    async def _report_applied(self) -> None:
        await self._store.report_applied(self._frontend_id, self._generation, APPLIED_TTL_S)

    async def ensure_fresh(self) -> None:
        """Re-reads the state if Redis has changed since it was last read.

        Change events arrive asynchronously, so a query sent right after an admin call could
        otherwise miss what that call did; one GET on a routing miss closes that window.
        """
        try:
            # The query waits for this check: with Redis down, the client's own retries would
            # hold it about 4 s before its 404.
            async with asyncio.timeout(ENSURE_FRESH_TIMEOUT_S):
                if await self._store.generation() != self._generation:
                    await self.refresh()
        except (aioredis.RedisError, OSError, TimeoutError) as e:
            logger.warning("could not check the cluster state: %s", str(e) or "timed out")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-watcher")

    async def stop(self) -> None:
        # The flag as well as the cancellation: redis-py's pubsub can swallow a cancellation
        # that lands while it reads a pending message, and the watcher would go on for ever.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        try:
            # Stopped, it is not waited for; killed, its record runs out by itself.
            async with asyncio.timeout(ENSURE_FRESH_TIMEOUT_S):
                await self._store.forget_frontend(self._frontend_id)
        except (aioredis.RedisError, OSError, TimeoutError) as e:
            logger.warning("could not remove this frontend's record: %s", str(e) or "timed out")

    async def _run(self) -> None:
        backoff_s = 0.1
        while not self._stopping:
            try:
                async with self._store.subscribe_changes() as pubsub:
                    await self.refresh()
                    backoff_s = 0.1
                    resync_at = time.monotonic() + self._resync_interval_s
                    while not self._stopping:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True,
                            timeout=min(HEARTBEAT_S, max(resync_at - time.monotonic(), 0.0)),
                        )
                        if message is None and time.monotonic() < resync_at:
                            await self._report_applied()
                            continue
                        # Drain a burst of events so that it costs one read.
                        while message is not None:
                            message = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=0
                            )
                        await self.refresh()
                        resync_at = time.monotonic() + self._resync_interval_s
            except (aioredis.RedisError, OSError) as e:
                logger.warning("lost Redis (%s); reconnecting in %.1fs", e, backoff_s)
            except Exception:
                # A watcher that died here would leave routing frozen at its last state.
                logger.exception("could not apply the cluster state; retrying in %.1fs", backoff_s)
            # Not inside the except block: compiled, this coroutine would stay the thread's
            # handler of the error while it sleeps, and every exception that the loop's other
            # callbacks raised meanwhile would get it as its __context__.
            await asyncio.sleep(backoff_s)  # a reconnect backoff, not a poll
            backoff_s = min(backoff_s * 2, 2.0)
