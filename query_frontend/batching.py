"""Per-model-version queues ordered by deadline, and replica workers that drain them in batches."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from clipper_protos import model_pb2, model_pb2_grpc
from management.input_types import InputType

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Extra time a batch RPC may take past its latest deadline: late answers still fill the cache.
RPC_GRACE_S = 30.0
# Status codes that mean the replica is gone, not that the model failed on this batch.
_REPLICA_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


class QueryFailed(Exception):
    """The model could not answer this query; the message becomes the default explanation."""


class QueryExpired(Exception):
    """The query's deadline passed before it could be sent."""


class NoReplicas(Exception):
    """The model version lost its last replica while the query waited."""


@dataclass(order=True, slots=True)
class Query:
    deadline: float
    seq: int
    item: bytes = field(compare=False)
    future: asyncio.Future[str] = field(compare=False)
    enqueued_at: float = field(compare=False, default_factory=time.monotonic)


class ModelQueue:
    """The queries waiting for one model version, earliest deadline first."""

    def __init__(self, model_name: str, model_version: str, input_type: InputType) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.input_type = input_type
        self.batch_size = -1
        self._heap: list[Query] = []
        self._seq = itertools.count()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, item: bytes, deadline: float, future: asyncio.Future[str]) -> None:
        heapq.heappush(self._heap, Query(deadline, next(self._seq), item, future))
        self._nonempty.set()

    def requeue(self, queries: list[Query]) -> None:
        for query in queries:
            if not query.future.done():
                heapq.heappush(self._heap, query)
        if self._heap:
            self._nonempty.set()

    async def take(self, max_size: Callable[[], int]) -> list[Query]:
        """Waits for work, drops what has expired, and returns up to max_size() queries.

        The size is asked for once work is there, so a change made while waiting applies.
        """
        while True:
            while not self._heap:
                self._nonempty.clear()
                await self._nonempty.wait()
            limit = max_size()
            now = time.monotonic()
            batch: list[Query] = []
            while self._heap and len(batch) < limit:
                query = heapq.heappop(self._heap)
                if query.future.done():
                    continue  # answered elsewhere (a twin, or a failure) while it waited
                if query.deadline <= now:
                    query.future.set_exception(QueryExpired())
                    continue
                batch.append(query)
            if batch:
                return batch

    def fail_all(self, error: Exception) -> None:
        for query in self._heap:
            if not query.future.done():
                query.future.set_exception(error)
        self._heap.clear()


class BatchSizer:
    """Chooses the next batch size for one replica.

    A registered batch_size is used as is (a maximum: a shallow queue sends less). For -1 the
    size grows additively while batches finish inside the tightest deadline they carried and
    halves when one does not (AIMD).
    """

    def __init__(self, fixed_size: int, max_adaptive_size: int) -> None:
        self._fixed = fixed_size if fixed_size > 0 else None
        self._max = max_adaptive_size
        self.size = self._fixed or 1

    def observe(self, batch_len: int, finished_at: float, earliest_deadline: float) -> None:
        if self._fixed is not None:
            return
        if finished_at > earliest_deadline:
            self.size = max(1, self.size // 2)
        elif batch_len >= self.size:
            self.size = min(self._max, self.size + 1)


@dataclass
class BatchStats:
    """What a worker reports after each batch, for metrics."""

    batch_size: int
    latency_s: float


BatchObserver = Callable[[str, str, BatchStats], None]
ReplicaGoneCallback = Callable[[str], None]


class ReplicaClient:
    """The gRPC channel to one replica."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = model_pb2_grpc.ModelServiceStub(self._channel)

    async def predict(
        self, input_type: InputType, items: list[bytes], timeout_s: float
    ) -> model_pb2.PredictResponse:
        request = model_pb2.PredictRequest(
            input_type=model_pb2.InputType.ValueType(int(input_type)), inputs=items
        )
        response: model_pb2.PredictResponse = await self._stub.Predict(request, timeout=timeout_s)
        return response

    async def close(self) -> None:
        await self._channel.close()


class ReplicaWorker:
    """Pulls batches from its model's queue for one replica, with one batch in flight at a time."""

    def __init__(
        self,
        replica_key: str,
        queue: ModelQueue,
        client: ReplicaClient,
        sizer: BatchSizer,
        on_batch: BatchObserver,
        on_gone: ReplicaGoneCallback,
    ) -> None:
        self.replica_key = replica_key
        self._queue = queue
        self._client = client
        self.sizer = sizer
        self._on_batch = on_batch
        self._on_gone = on_gone
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replica-worker-{self.replica_key}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._client.close()

    async def _run(self) -> None:
        while True:
            batch = await self._queue.take(lambda: self.sizer.size)
            try:
                replica_alive = await self._send(batch)
            except asyncio.CancelledError:
                self._queue.requeue(batch)  # stopped mid-batch: another replica takes them
                raise
            if not replica_alive:
                return

    async def _send(self, batch: list[Query]) -> bool:
        """Sends one batch and settles its queries; False when the replica turned out gone."""
        started = time.monotonic()
        latest = max(q.deadline for q in batch)
        items = [q.item for q in batch]
        try:
            response = await self._client.predict(
                self._queue.input_type, items, latest - started + RPC_GRACE_S
            )
        except grpc.aio.AioRpcError as e:
            if e.code() in _REPLICA_GONE:
                logger.warning(
                    "replica %s at %s is gone (%s); retrying its %d queries elsewhere",
                    self.replica_key,
                    self._client.address,
                    e.code().name,
                    len(batch),
                )
                self._queue.requeue(batch)
                self._on_gone(self.replica_key)
                return False
            _fail(batch, e.details() or e.code().name)
            return True
        if len(response.outputs) != len(batch):
            _fail(
                batch, f"replica returned {len(response.outputs)} outputs for {len(batch)} inputs"
            )
            return True
        finished = time.monotonic()
        self.sizer.observe(len(batch), finished, min(q.deadline for q in batch))
        self._on_batch(
            self._queue.model_name,
            self._queue.model_version,
            BatchStats(len(batch), finished - started),
        )
        for query, output in zip(batch, response.outputs, strict=True):
            if query.future.done():
                continue
            if output.WhichOneof("result") == "error":
                query.future.set_exception(QueryFailed(output.error))
            else:
                query.future.set_result(output.value)
        return True


def _fail(batch: list[Query], message: str) -> None:
    for query in batch:
        if not query.future.done():
            query.future.set_exception(QueryFailed(message))
