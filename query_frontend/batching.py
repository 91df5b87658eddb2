"""Per-model-version queues ordered by deadline, and replica workers that drain them in batches."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import grpc

from clipper_protos import model_pb2
from management.input_types import InputType
from query_frontend.wire import PREDICT_STREAM_PATH, encode_predict_request

logger = logging.getLogger(__name__)

# gRPC's limit on one message to or from a replica. A batch request stays well under it (see
# MAX_BATCH_INPUT_BYTES); a reply is held to it by the replica, which explains a larger one.
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024
# A batch takes queries until their inputs total this much, and a larger query goes alone:
# queries that each fit in a message could otherwise form a batch that does not, and it would
# fail them all.
MAX_BATCH_INPUT_BYTES = 64 * 1024 * 1024
# Extra time a batch RPC may take past its latest deadline: late answers still fill the cache.
RPC_GRACE_S = 30.0
# Status codes that mean the replica is gone, not that the model failed on this batch.
_REPLICA_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


_deadline = operator.attrgetter("deadline")

# Told (model name, version, count) of queries the queue gave the SLO default before any
# replica took them.
ExpiryObserver = Callable[[str, str, int], None]


class QueryFailed(Exception):
    """The model could not answer this query; the message becomes the default explanation."""


class QueryExpired(Exception):
    """The query's deadline passed, or would pass, before the model could answer it."""


class NoReplicas(Exception):
    """The model version lost its last replica while the query waited."""


class Overloaded(Exception):
    """The queue already holds more work than the model can finish within the query's SLO."""


class Query(NamedTuple):
    """Ordered by deadline, then arrival: a tuple, so that the heap compares in C. The seq
    is unique, so the comparison never reaches the item or the future."""

    deadline: float
    seq: int
    item: bytes
    future: asyncio.Future[str]
    # When it was queued, and how long admission expected it to take from then (0: no guess).
    put_at: float = 0.0
    expected_s: float = 0.0


class LatencyModel:
    """Batch latency as fixed + per_item * size, fitted by least squares on recent batches.

    A batch far slower than predicted (a cold first call, a pause) is left out of the fit once
    the model has enough samples to tell.
    """

    TRUSTED_AFTER: ClassVar[int] = 8
    OUTLIER_FACTOR: ClassVar[float] = 4.0
    # Per-size averages: real costs are not linear (a BLAS kernel may change with the size),
    # so a size measured a few times is predicted from its own batches.
    MEASURED_AFTER: ClassVar[int] = 3
    SIZE_SMOOTHING: ClassVar[float] = 0.2

    def __init__(self, window: int = 64) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._window = window
        # Per size: the smoothed latency, how many batches measured it, and the number of the
        # last of them among all batches observed.
        self._by_size: dict[int, tuple[float, int, int]] = {}
        self._observed = 0
        self.fixed_s = 0.0
        self.per_item_s = 0.0
        self.largest_seen = 0
        self._slope_measured = False

    @property
    def fitted(self) -> bool:
        return bool(self._samples)

    @property
    def trusted(self) -> bool:
        return len(self._samples) >= self.TRUSTED_AFTER

    def observe(self, size: int, latency_s: float) -> None:
        if self.trusted and latency_s > self.OUTLIER_FACTOR * self.predict_s(size):
            return
        if len(self._samples) == 1 and latency_s * self.OUTLIER_FACTOR < self._samples[0][1]:
            self._samples.clear()  # the first batch was a cold start: forget it
            self._by_size.clear()
        self._samples.append((size, latency_s))
        previous = self._by_size.get(size)
        if previous is not None and self._recent(previous):
            mean_s, count, _ = previous
        else:
            # Never measured, or not since the window: an old average was measured in other
            # conditions and would outweigh the new batch, so this size starts over.
            mean_s, count = latency_s, 0
        self._observed += 1
        alpha = max(self.SIZE_SMOOTHING, 1 / (count + 1))
        self._by_size[size] = (mean_s + alpha * (latency_s - mean_s), count + 1, self._observed)
        self.largest_seen = max(size for size, _ in self._samples)
        n = len(self._samples)
        mean_x = sum(x for x, _ in self._samples) / n
        mean_y = sum(y for _, y in self._samples) / n
        var_x = sum((x - mean_x) ** 2 for x, _ in self._samples)
        if var_x == 0:
            # One size in the window tells the level, not the slope. Keep the slope last
            # measured and move the line through this size: when overload has shrunk every
            # batch to one size, charging it all per item would predict every larger batch
            # too slow to try, and the batches would never grow back.
            if self._slope_measured:
                self.per_item_s = min(self.per_item_s, mean_y / mean_x)
                self.fixed_s = mean_y - self.per_item_s * mean_x
            else:
                # None measured yet: charge it all per item, which overestimates larger
                # batches and so grows them cautiously.
                self.fixed_s, self.per_item_s = 0.0, mean_y / mean_x
            return
        slope = sum((x - mean_x) * (y - mean_y) for x, y in self._samples) / var_x
        self.per_item_s = max(slope, 0.0)
        self.fixed_s = max(mean_y - self.per_item_s * mean_x, 0.0)
        self._slope_measured = True

    def predict_s(self, size: int) -> float:
        measured = self._by_size.get(size)
        if measured is not None and self._current(measured):
            return measured[0]
        return self.fixed_s + self.per_item_s * size

    def upper_bound_s(self, size: int) -> float:
        """At least the predicted latency of every batch size up to `size`."""
        measured = (m[0] for m in self._by_size.values() if self._current(m))
        return max(max(measured, default=0.0), self.fixed_s + self.per_item_s * size)

    def _current(self, measured: tuple[float, int, int]) -> bool:
        """Whether a size's own average is measured often enough, and recently enough, to
        predict it by.

        A size not sent within the fit's window of batches is predicted by the fit again, and
        its average starts over when it is sent: it was measured in other conditions, such as
        a core shared with a busier frontend. Kept for good, a slow average kept that size
        from being sent, and so from being measured again: on the MLP at c=32, an average of
        19 ms for 32 from a warm-up at c=64 kept batches at 15 to 18 queries with 29 to 32
        queued (32 then took 13 to 14 ms).
        """
        return measured[1] >= self.MEASURED_AFTER and self._recent(measured)

    def _recent(self, measured: tuple[float, int, int]) -> bool:
        """Whether the size was sent within the fit's window of batches."""
        return self._observed - measured[2] < self._window

    def rate_per_s(self, size: int) -> float:
        """Queries per second a replica sustains with batches of this size."""
        return size / max(self.predict_s(size), 1e-9)

    def predict_seen_s(self, size: int) -> float:
        """The prediction, not extrapolated past the largest batch seen: never shed a query
        on a guess about batch sizes the model has not measured."""
        return self.predict_s(min(size, max(self.largest_seen, 1)))

    def largest_size_within(self, budget_s: float, cap: int) -> int:
        if not self.fitted:
            return 1
        if self.per_item_s <= 0:
            return cap
        return max(1, min(cap, int((budget_s - self.fixed_s) / self.per_item_s)))


class BatchPolicy:
    """Chooses batch sizes for one model version, shared by the workers of its replicas.

    The size is at most the largest whose predicted latency fits the remaining budget of the
    most urgent query (with a safety margin), up to the registered batch_size, or up to
    max_adaptive_size when it is -1; `plan` decides whether to wait for it. Queries that would
    finish after their deadline in the chosen batch are shed instead of sent.
    """

    SAFETY: ClassVar[float] = 0.85
    # The share of its time a replica may spend busy before batches should grow instead.
    UTILIZATION: ClassVar[float] = 0.7
    # Waiting must raise the replica's rate by this much to be worth its latency.
    WORTH_WAITING: ClassVar[float] = 1.2

    def __init__(self, batch_size: int, max_adaptive_size: int, max_wait_s: float) -> None:
        self.max_adaptive_size = max_adaptive_size
        self.max_wait_s = max_wait_s
        self.latency = LatencyModel()
        # Exploration: the fit only knows sizes it has seen, so a probe size grows while
        # batches meet their deadlines (and halves when one does not), as Clipper's AIMD did.
        self.probe = 1
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        self.fixed = batch_size > 0
        self.cap = batch_size if self.fixed else self.max_adaptive_size

    def target_size(self, budget_s: float) -> int:
        if self.fixed and not self.latency.fitted:
            return self.cap  # a registered size is tried as is until batches say otherwise
        fitted = self.latency.largest_size_within(budget_s * self.SAFETY, self.cap)
        return min(self.cap, max(fitted, self.probe))

    def plan(
        self, budgets_s: list[float], queued: int, arrival_rate_per_s: float, workers: int
    ) -> tuple[int, float]:
        """The batch size to take, and how long to wait for the queue to reach it.

        `budgets_s` are the remaining budgets of the most urgent queries, ascending, as many as
        a batch may hold. Of what is queued, the batch that answers the most queries on time
        per second of replica time goes: when the most urgent query cannot be saved, a small
        batch for it would only make every query behind it late too. A batch that would keep
        a replica above UTILIZATION at the current arrival rate waits, while the most urgent
        budget allows, for the smallest batch that keeps up (or the most efficient one).
        """
        latency = self.latency
        target = self.target_size(budgets_s[0])
        if not latency.trusted:
            return min(queued, target), 0.0
        now_size, now_score = 1, -1.0
        urgent = len(budgets_s)
        for size in range(1, urgent + 1):
            predicted_s = latency.predict_s(size)
            # The queries that would be late in this batch are shed, and the ones behind them
            # take their places: count every query that would make it, not only the first.
            on_time = min(size, urgent - bisect.bisect_right(budgets_s, predicted_s))
            score = on_time / max(predicted_s, 1e-9)
            if score >= now_score:
                now_size, now_score = size, score
        if now_size < queued or now_size >= target or arrival_rate_per_s <= 0:
            return now_size, 0.0
        if arrival_rate_per_s <= self.kept_up_per_s(now_size, workers):
            return now_size, 0.0
        need_per_s = arrival_rate_per_s / (max(workers, 1) * self.UTILIZATION)
        now_rate = latency.rate_per_s(now_size)
        best, best_rate = now_size, now_rate
        for size in range(now_size + 1, target + 1):
            rate = latency.rate_per_s(size)
            if rate >= need_per_s:
                best, best_rate = size, rate
                break
            if rate > best_rate:
                best, best_rate = size, rate
        if best_rate < self.WORTH_WAITING * now_rate:
            return now_size, 0.0
        wait_s = min(budgets_s[0] * self.SAFETY - latency.predict_s(best), self.max_wait_s)
        return (best, wait_s) if wait_s > 0 else (now_size, 0.0)

    def kept_up_per_s(self, size: int, workers: int) -> float:
        """The highest arrival rate that batches of `size` keep up with, each replica busy at
        most UTILIZATION of its time."""
        return self.latency.rate_per_s(size) * max(workers, 1) * self.UTILIZATION

    def observe(self, size: int, latency_s: float, met_deadline: bool) -> None:
        self.latency.observe(size, latency_s)
        if not met_deadline:
            self.probe = max(1, self.probe // 2)
        elif size >= self.probe:
            self.probe = min(self.cap, self.probe + max(1, self.probe // 4))


class ModelQueue:
    """The queries waiting for one model version, earliest deadline first.

    A timer on the head's deadline sheds expired queries at once, even while every replica is
    busy, so no expired query is ever sent and none holds queue space.
    """

    # How fast admission learns how far its expected waits are from the real ones.
    CALIBRATION_WEIGHT: ClassVar[float] = 0.01
    CALIBRATION_RANGE: ClassVar[tuple[float, float]] = (0.5, 3.0)
    RATE_WINDOW: ClassVar[int] = 32
    # After this long with no batch sent, the latency model is doubted: queries are admitted
    # and one is sent even if predicted late, so that the model measures again.
    RELEARN_S: ClassVar[float] = 0.5
    GATHER_PASSES: ClassVar[int] = 4
    GATHER_BELOW_S: ClassVar[float] = 0.003

    def __init__(
        self,
        model_name: str,
        model_version: str,
        input_type: InputType,
        policy: BatchPolicy,
        max_len: int,
        on_expired: ExpiryObserver | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.input_type = input_type
        self.policy = policy
        self.max_len = max_len
        self.num_workers = 0
        self._on_expired = on_expired
        self._heap: list[Query] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = float("inf")
        # Recent arrival times, to judge whether waiting for more work pays.
        self._arrivals: deque[float] = deque(maxlen=self.RATE_WINDOW)
        # For each of those arrivals, whether another query was then queued or at a replica.
        self._overlapped: deque[bool] = deque(maxlen=self.RATE_WINDOW)
        self._batches_out = 0
        # When the batch last sent should come back, as predicted when it went.
        self._busy_until = 0.0
        # Real waits over expected ones, for queries admitted with a guess: the fitted batch
        # latencies leave out time the batches spend behind other work (the frontend's own,
        # on a shared core), and the policy may split a queue in more batches than assumed.
        self._calibration = 1.0
        self._admitted_expected_s = 0.0
        self._last_batch_at = time.monotonic()
        # Set once the last replica has left: queries a worker hands back after that (its
        # batch found the replica gone) get this error, as those still queued did.
        self._closed_with: Exception | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def admits(self, deadline: float) -> bool:
        """Whether a new query with this deadline is expected to be answered in time: `put`
        refuses it if not.

        A query admitted and then answered late costs the frontend its parsing and holds a place
        that an on-time query could have had; one refused costs little, as the frontend answers
        it unparsed (and at its deadline, so that a client retrying at once cannot turn
        refusals into a storm).
        """
        now = time.monotonic()
        budget_s = deadline - now
        expected_s = self._expected_wait_s(now, budget_s)
        self._admitted_expected_s = expected_s
        return len(self._heap) < self.max_len and self._calibration * expected_s <= budget_s

    def put(
        self, item: bytes, deadline: float, future: asyncio.Future[str], admitted: bool = False
    ) -> None:
        """Queues a query; raises Overloaded when it could not be answered within its deadline.

        `admitted`: the caller has just had `admits` say yes for this deadline (its estimate is
        kept for this query).
        """
        if not admitted and not self.admits(deadline):
            raise Overloaded()
        now = time.monotonic()
        self._arrivals.append(now)
        self._overlapped.append(bool(self._heap) or self._batches_out > 0)
        query = Query(deadline, next(self._seq), item, future, now, self._admitted_expected_s)
        heapq.heappush(self._heap, query)
        self._on_change()

    def _expected_wait_s(self, now: float, budget_s: float) -> float:
        """How long a new query would take to be answered: the rest of the batch in progress,
        then the queue ahead and the query itself, in batches as large as its budget allows.

        0 until the latency model is trusted, and while no batch has gone for RELEARN_S, so
        that a wrong prediction cannot refuse every query from then on.
        """
        latency = self.policy.latency
        if not latency.trusted or self._relearning():
            return 0.0
        workers = max(self.num_workers, 1)
        busy_s = max(0.0, self._busy_until - now) if self._batches_out >= workers else 0.0
        per_worker = -(-(len(self._heap) + 1) // workers)
        size = latency.largest_size_within(
            (budget_s - busy_s) * self.policy.SAFETY, self.policy.cap
        )
        if per_worker <= size:
            return busy_s + latency.predict_seen_s(per_worker)
        return busy_s + -(-per_worker // size) * latency.predict_seen_s(size)

    def calibrate(self, query: Query, settled_at: float) -> None:
        """Learns from a query answered (or expired) at settled_at how far off its expected
        wait was; a later query's estimate is scaled by what was learned."""
        if query.expected_s <= 0:
            return
        low, high = self.CALIBRATION_RANGE
        ratio = min(max((settled_at - query.put_at) / query.expected_s, low), high)
        self._calibration += self.CALIBRATION_WEIGHT * (ratio - self._calibration)

    def _relearning(self) -> bool:
        return time.monotonic() - self._last_batch_at > self.RELEARN_S

    def requeue(self, queries: list[Query]) -> None:
        closed_with = self._closed_with
        for query in queries:
            if query.future.done():
                continue
            if closed_with is not None:
                query.future.set_exception(closed_with)
            else:
                heapq.heappush(self._heap, query)
        self._on_change()

    def _on_change(self) -> None:
        self._changed.set()
        if self._heap and self._heap[0].deadline < self._timer_deadline:
            self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_deadline = None, float("inf")
        if self._heap:
            self._timer_deadline = self._heap[0].deadline
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self._timer_deadline, self._shed_expired)

    def _shed_expired(self) -> None:
        self._timer, self._timer_deadline = None, float("inf")
        now = time.monotonic()
        expired = 0
        while self._heap and (self._heap[0].deadline <= now or self._heap[0].future.done()):
            query = heapq.heappop(self._heap)
            if not query.future.done():
                query.future.set_exception(QueryExpired())
                self.calibrate(query, now)
                expired += 1
        self._report_expired(expired)
        self._arm_timer()

    def _report_expired(self, count: int) -> None:
        if count and self._on_expired is not None:
            self._on_expired(self.model_name, self.model_version, count)

    async def take(self) -> list[Query]:
        """Waits for work and returns the next batch, sized by the policy."""
        while True:
            while not self._heap:
                self._changed.clear()
                await self._changed.wait()
            while self._heap and self._heap[0].future.done():
                heapq.heappop(self._heap)  # answered elsewhere (a twin, or a failure)
            if not self._heap:
                continue
            if any(self._overlapped) and self._batches_are_cheap():
                await self._gather_arrived()
                if not self._heap:
                    continue
            now = time.monotonic()
            size, wait_s = self._plan(now)
            if len(self._heap) < size and wait_s > 0:
                await self._wait_for_size(size, now + wait_s)
                if not self._heap:
                    continue
                # More may have come than waited for, and a batch of them all may answer more
                # on time per second: the batch is chosen again from what is queued now,
                # without a second wait.
                size, _ = self._plan(time.monotonic())
            batch = self._pop_batch(size)
            if batch:
                self._batches_out += 1
                return batch

    def _plan(self, now: float) -> tuple[int, float]:
        """The policy's batch size for what is queued at `now`, and how long to wait for it."""
        return self.policy.plan(
            self._urgent_budgets_s(now),
            len(self._heap),
            self._arrival_rate_per_s(now),
            self.num_workers,
        )

    def _batches_are_cheap(self) -> bool:
        """Whether a batch of what is queued takes less than GATHER_BELOW_S: only then do the
        fixed costs around it outweigh a few more loop passes of delay."""
        latency = self.policy.latency
        size = min(len(self._heap), self.policy.cap)
        return latency.trusted and latency.predict_s(size) < self.GATHER_BELOW_S

    async def _gather_arrived(self) -> None:
        """Lets the event loop run while each of its passes still queues more queries.

        Requests that reached the frontend together are read, parsed and queued over a few
        passes of the loop. A batch taken at the first of them leaves the rest for the next
        one, and every batch costs its replica and the frontend a fixed amount (gRPC, thread
        hand-offs), so a batch now waits until a pass adds nothing, at most GATHER_PASSES.
        That waits for work already on this host, never for work yet to come. It is done only
        for cheap batches: with the MLP (batches of 4 to 25 ms), gathering cut the rate at c=8
        by a fifth (3 alternating rounds), while the no-op model's rate at c=64 (batches of 1 to
        2 ms as the frontend times them) rose by 5%.
        """
        for _ in range(self.GATHER_PASSES):
            queued = len(self._heap)
            await asyncio.sleep(0)  # one pass of the loop: a yield, not a timed wait
            if len(self._heap) == queued:
                return

    def batch_done(self) -> None:
        """A batch that `take` returned is answered, failed or back in the queue."""
        self._batches_out -= 1

    def _urgent_budgets_s(self, now: float) -> list[float]:
        """The remaining budgets of the queries a batch may hold, most urgent first."""
        k = min(self.policy.cap, len(self._heap))
        head_s = self._heap[0].deadline - now
        if head_s >= self.policy.latency.upper_bound_s(k):
            # Even the most urgent query makes a batch of any size, so every one does: no need
            # to scan a deep queue for the order of the rest.
            return [head_s] * k
        return [q.deadline - now for q in heapq.nsmallest(k, self._heap, key=_deadline)]

    def _arrival_rate_per_s(self, now: float) -> float:
        # Over the last RATE_WINDOW arrivals up to now: a pause lowers the rate as it lasts,
        # but a short lull does not hide the load. On a core shared with the frontend, queries
        # reach the queue in bursts, and treating each lull as the end of the load made
        # replicas take small, costly batches that starved the frontend in turn.
        if len(self._arrivals) < 2:
            return 0.0
        if not any(self._overlapped):
            # No query arrived while another waited or was being answered: the clients send
            # one query at a time and wait for its answer, so however high their rate, no
            # second query comes while this one waits for a fuller batch.
            return 0.0
        return (len(self._arrivals) - 1) / max(now - self._arrivals[0], 1e-6)

    async def _wait_for_size(self, size: int, until: float) -> None:
        """Waits until the queue holds `size` queries, the time is up, or the arrivals have
        stopped for long enough that their rate, measured up to now, is one that a batch of
        what is queued keeps up with.

        The rate that started the wait was measured over the last arrivals, and those can be
        a burst: clients that each wait for their answer all send again within a millisecond
        of their batch's replies, and then none sends more while their queries wait. Waiting
        on for a batch that only more clients could fill left the replica idle for the whole
        wait (20 ms; likely the no-op model's occasional stall at c=64, core a fifth idle).
        """
        while self._heap and len(self._heap) < size:
            ends = min(until, self._arrivals_slow_at())
            if ends <= time.monotonic():
                return
            self._changed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that races with the inner wait finishing, and a worker must always stop when told.
            try:
                async with asyncio.timeout_at(ends):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _arrivals_slow_at(self) -> float:
        """When, with no further arrival, the measured arrival rate falls to what batches of
        what is queued keep up with (as `plan` measures both)."""
        if len(self._arrivals) < 2:
            return 0.0
        kept_up_per_s = self.policy.kept_up_per_s(
            min(len(self._heap), self.policy.cap), self.num_workers
        )
        return self._arrivals[0] + (len(self._arrivals) - 1) / max(kept_up_per_s, 1e-9)

    def _pop_batch(self, target: int) -> list[Query]:
        now = time.monotonic()
        latency = self.policy.latency
        size = min(target, len(self._heap))
        finish = now + latency.predict_seen_s(size) if latency.trusted else now
        batch: list[Query] = []
        late: list[Query] = []
        batch_bytes = 0
        while self._heap and len(batch) < target:
            query = heapq.heappop(self._heap)
            if query.future.done():
                continue
            if query.deadline <= finish:
                late.append(query)
            elif batch and batch_bytes + len(query.item) > MAX_BATCH_INPUT_BYTES:
                heapq.heappush(self._heap, query)  # it leads the next batch
                break
            else:
                batch_bytes += len(query.item)
                batch.append(query)
        if not batch and late and self._relearning():
            # Send one anyway: a batch keeps the latency model learning, so a wrong
            # prediction cannot shed every query from now on. Not more often: under overload
            # every batch of one late query takes the core from queries that could be saved.
            batch.append(late.pop())
        if batch:
            self._last_batch_at = now
            self._busy_until = finish
        for query in late:
            # It would be answered after its deadline: answer it with the default now.
            query.future.set_exception(QueryExpired())
            self.calibrate(query, max(query.deadline, now))
        self._report_expired(len(late))
        self._arm_timer()
        return batch

    def fail_all(self, error: Exception) -> None:
        """Fails every query queued now or handed back later: the queue has no replica left."""
        self._closed_with = error
        for query in self._heap:
            if not query.future.done():
                query.future.set_exception(error)
        self._heap.clear()
        self._arm_timer()


@dataclass
class BatchStats:
    """What a worker reports after each batch, for metrics."""

    batch_size: int
    latency_s: float
    # Queries whose deadline had passed when the batch came back: their clients already had
    # the default, so the model's time went only to the cache.
    late_answers: int = 0


BatchObserver = Callable[[str, str, BatchStats], None]
ReplicaGoneCallback = Callable[[str], None]


class BatchRejected(Exception):
    """The replica answered that the whole batch failed; the message says why."""


class ReplicaClient:
    """One long-lived PredictStream to one replica, carrying one batch at a time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        # Requests go out already encoded (see wire.py), so the stream has no serializer.
        self._open_stream = self._channel.stream_stream(
            PREDICT_STREAM_PATH,
            request_serializer=None,
            response_deserializer=model_pb2.PredictResponse.FromString,
        )
        self._stream: Any = None

    async def predict(
        self, input_type: InputType, items: list[bytes], timeout_s: float
    ) -> model_pb2.PredictResponse:
        """Sends one batch and waits for its answer; raises BatchRejected if the batch failed
        and grpc.aio.AioRpcError if the replica is unreachable."""
        request = encode_predict_request(int(input_type), items)
        stream = self._stream
        try:
            if stream is not None:
                try:
                    await _write(stream, request)
                except grpc.aio.AioRpcError:
                    # The stream ended while idle: the replica was restarted or its connection
                    # dropped, and the batch never reached it. A new stream tells which: it
                    # fails with UNAVAILABLE if nothing serves the address.
                    stream.cancel()
                    stream = None
            if stream is None:
                stream = self._stream = self._open_stream()
                await _write(stream, request)
            async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                response = await stream.read()
        except BaseException:
            # A stream in an unknown state is not reused: the next batch opens a new one.
            self._stream = None
            if stream is not None:
                stream.cancel()
            raise
        if response is grpc.aio.EOF:
            self._stream = None
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="the replica closed the stream",
            )
        if response.HasField("error"):
            raise BatchRejected(response.error.message)
        result: model_pb2.PredictResponse = response
        return result

    async def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        await self._channel.close()


class ReplicaWorker:
    """Pulls batches from its model's queue for one replica, with one batch in flight at a time."""

    # After a batch predicted to take this long, the frontend writes its replies before it
    # sends the next one. A replica on the frontend's core starts computing as soon as its
    # batch arrives and takes the core from the handlers that still have to reply, so replies
    # that were on time went out late. Two loop passes run those handlers first. Cheaper
    # batches (by the latency model, as for gathering) skip it: there the frontend is the
    # bottleneck, and the passes would only hold the replica back.
    REPLY_FIRST_FROM_S: ClassVar[float] = 0.003
    REPLY_PASSES: ClassVar[int] = 2

    def __init__(
        self,
        replica_key: str,
        queue: ModelQueue,
        client: ReplicaClient,
        on_batch: BatchObserver,
        on_gone: ReplicaGoneCallback,
    ) -> None:
        self.replica_key = replica_key
        self._queue = queue
        self._client = client
        self._on_batch = on_batch
        self._on_gone = on_gone
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self._retiring = False
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"replica-worker-{self.replica_key}")

    def retire(self) -> None:
        """Takes no more batches, but lets the batch in flight finish: the replica's record
        is gone, not necessarily the replica. It may be stopping gracefully, which finishes
        that batch, or busy in a call that held the GIL past its heartbeat's ttl; a dead one
        fails the batch, which then goes back to the queue."""
        self._retiring = True
        if not self._sending and self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stops at once; a batch in flight goes back to the queue for another replica."""
        if self._task is not None:
            self._task.cancel()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Waits for the worker to end (see retire and stop), then closes its connection."""
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def _run(self) -> None:
        while not self._retiring:
            batch = await self._queue.take()
            self._sending = True
            try:
                replica_alive = await self._send(batch)
            except asyncio.CancelledError:
                self._queue.requeue(batch)  # stopped mid-batch: another replica takes them
                raise
            finally:
                self._sending = False
                self._queue.batch_done()
            if not replica_alive or self._retiring:
                return
            if self._queue.policy.latency.predict_s(len(batch)) >= self.REPLY_FIRST_FROM_S:
                # Two passes: a handler waits on its queries through a callback of theirs
                # (as asyncio.wait does), which wakes its task one pass later; one pass let
                # the next batch go before any of them replied.
                for _ in range(self.REPLY_PASSES):
                    await asyncio.sleep(0)

    async def _send(self, batch: list[Query]) -> bool:
        """Sends one batch and settles its queries; False when the replica turned out gone."""
        started = time.monotonic()
        latest = max(q.deadline for q in batch)
        items = [q.item for q in batch]
        try:
            response = await self._client.predict(
                self._queue.input_type, items, latest - started + RPC_GRACE_S
            )
        # Each handler names its own exception: compiled by mypyc, one name shared by except
        # clauses of different types would be typed by the first and fail in the others.
        except BatchRejected as rejected:
            _fail(batch, str(rejected))
            return True
        except TimeoutError:
            _fail(batch, f"the replica did not answer within {RPC_GRACE_S:.0f} s past the deadline")
            return True
        except grpc.aio.AioRpcError as rpc_error:
            if rpc_error.code() in _REPLICA_GONE:
                logger.warning(
                    "replica %s at %s is gone (%s); retrying its %d queries elsewhere",
                    self.replica_key,
                    self._client.address,
                    rpc_error.code().name,
                    len(batch),
                )
                self._queue.requeue(batch)
                self._on_gone(self.replica_key)
                return False
            _fail(batch, rpc_error.details() or rpc_error.code().name)
            return True
        except Exception as unexpected:
            # A worker that died here would leave its replica listed and its queue waiting on
            # it, and every query routed to it would get the default at its SLO.
            logger.exception("batch to replica %s failed", self.replica_key)
            _fail(batch, f"{type(unexpected).__name__}: {unexpected}")
            return True
        if len(response.outputs) != len(batch):
            _fail(
                batch, f"replica returned {len(response.outputs)} outputs for {len(batch)} inputs"
            )
            return True
        finished = time.monotonic()
        met_deadline = finished <= min(q.deadline for q in batch)
        self._queue.policy.observe(len(batch), finished - started, met_deadline)
        # Answered after their deadline: the client already has its default, though the
        # answer still fills the cache.
        late = sum(1 for query in batch if query.deadline < finished)
        for query, output in zip(batch, response.outputs, strict=True):
            self._queue.calibrate(query, finished)
            if query.future.done():
                continue
            if output.WhichOneof("result") == "error":
                query.future.set_exception(QueryFailed(output.error))
            else:
                query.future.set_result(output.value)
        self._on_batch(
            self._queue.model_name,
            self._queue.model_version,
            BatchStats(len(batch), finished - started, late),
        )
        return True


async def _write(stream: Any, request: bytes) -> None:
    """Writes one request; raises grpc.aio.AioRpcError with the stream's status if it had ended
    (gRPC raises asyncio.InvalidStateError, which does not say why: UNAVAILABLE for a replica
    that died)."""
    try:
        await stream.write(request)
    except asyncio.InvalidStateError:
        code = await stream.code()
        raise grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=await stream.details()
        ) from None


def _fail(batch: list[Query], message: str) -> None:
    for query in batch:
        if not query.future.done():
            query.future.set_exception(QueryFailed(message))
