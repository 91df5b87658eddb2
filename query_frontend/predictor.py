"""Answers predict requests: route to a model version, use the cache, queue, and apply the SLO."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from management.input_types import parse_input_type
from query_frontend.batching import (
    BatchStats,
    ModelQueue,
    Overloaded,
    QueryExpired,
    QueryFailed,
)
from query_frontend.cache import CacheKey, PredictionCache
from query_frontend.codec import (
    BinaryInput,
    output_value,
    parse_binary_request,
    parse_predict_request,
)
from query_frontend.errors import NOT_FOUND, QUERY_PROCESSING_ERROR, QueryError
from query_frontend.metrics import Counter, Histogram, Meter, MetricsRegistry, RatioCounter
from query_frontend.routing import Router

NO_MODELS_EXPLANATION = "No connected models found for query"
OVERLOADED_EXPLANATION = (
    "Model is overloaded: its queue holds more work than it can finish within the latency SLO"
)
SLO_EXPLANATION = "Failed to retrieve a prediction response within the specified latency SLO"
# Of the SLO, the share kept for writing the reply and its trip to the client, up to a cap.
# The handlers of a batch of 17 behind a loop that parses a thousand requests a second took
# more than 2 ms to reply: at 2% (at most 2 ms), up to a fifth of the answers that came back
# in time reached their handler after the SLO and were replaced by the default.
REPLY_MARGIN_SHARE = 0.12
REPLY_MARGIN_MAX_S = 0.006
# An answer whose handler runs this close to the SLO (a share of it, up to a cap) gets the
# default: its reply would reach the client after the SLO. The kernel's reading of the
# unread time is up to a tick (4 ms) short, and a client reads the replies of a batch one
# after another. At 120% of the MLP's capacity, answers reached their client 0.2 ms after
# their handler at the median but 4.4 to 4.9 ms at the 99th percentile; with the default
# for answers reached in the last 2 ms, the p99 of answers at the client would have been
# 49.0 ms in both runs instead of 50.0 and 50.8, for under 2% of the answers.
LATE_REPLY_SHARE = 0.04
LATE_REPLY_MAX_S = 0.002
# SLOs up to this long have each request's unread time read from the kernel, not guessed from
# the loop's lag: the waits the lag missed reached 20 ms with the MLP at 120%, two fifths of
# a 50 ms SLO but a tenth of this one. Longer SLOs spare the system call, which cost the
# no-op frontend (SLO 1 s) a tenth of its rate at c=64.
EXACT_UNREAD_SLO_MAX_S = 0.2


@dataclass(slots=True)
class Prediction:
    query_id: int
    output: Any
    default: bool
    default_explanation: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "query_id": self.query_id,
            "output": self.output,
            "default": self.default,
        }
        if self.default_explanation is not None:
            doc["default_explanation"] = self.default_explanation
        return doc


@dataclass(slots=True)
class _AppMetrics:
    num_predictions: Counter
    default_ratio: RatioCounter
    throughput: Meter
    latency: Histogram


@dataclass(slots=True)
class _ModelMetrics:
    num_predictions: Counter
    throughput: Meter
    latency: Histogram
    cache_hit_ratio: RatioCounter


class Predictor:
    def __init__(
        self,
        router: Router,
        cache: PredictionCache,
        metrics: MetricsRegistry,
        ensure_fresh: Callable[[], Awaitable[None]],
        max_batch_inputs: int,
    ) -> None:
        self._router = router
        self._cache = cache
        self._metrics = metrics
        # Called on a routing miss: re-reads the cluster state if an admin call changed it.
        self._ensure_fresh = ensure_fresh
        self._max_batch_inputs = max_batch_inputs
        self._query_ids = itertools.count()
        # Each app's and model version's metrics, looked up once: building their names and
        # hashing them on every request cost the frontend a few microseconds per request.
        self._app_metrics: dict[str, _AppMetrics] = {}
        self._model_metrics: dict[tuple[str, str], _ModelMetrics] = {}
        self._total_predictions = metrics.counter("internal:aggregate_num_predictions")
        self._cache_lookups = metrics.counter("internal:prediction_cache_lookups")
        self._cache_hit_ratio = metrics.ratio("internal:prediction_cache_hit_ratio")
        self._unread_wait = metrics.histogram("internal:unread_wait")
        self._late_replies = metrics.counter("internal:late_replies")

    def forget_removed(self, apps: Collection[str], models: Collection[tuple[str, str]]) -> None:
        """Drops the metrics of apps and model versions no longer in the cluster."""
        self._metrics.retain(apps, models)
        for app_name in [a for a in self._app_metrics if a not in apps]:
            del self._app_metrics[app_name]
        for model_id in [m for m in self._model_metrics if m not in models]:
            del self._model_metrics[model_id]

    def known_app(self, app_name: str) -> bool:
        return self._router.app(app_name) is not None

    async def predict(
        self,
        app_name: str,
        body: bytes,
        unread: Callable[[bool], float] | None = None,
        binary: BinaryInput | None = None,
    ) -> tuple[bool, list[Prediction]]:
        """The predictions for one request body, and whether it was an input_batch request.
        The body is JSON, or one input as it is when `binary` is given.

        `unread(exact)` says how long the request had waited before this call (exactly, or
        as cheaply as the caller can): its SLO counts from its arrival, not from when the
        frontend got to it.
        """
        app = self._router.app(app_name)
        if app is None:
            await self._ensure_fresh()
            app = self._router.app(app_name)
        if app is None:
            raise QueryError(NOT_FOUND, f"No application named '{app_name}' exists", status=404)
        slo_s = app.latency_slo_micros / 1e6
        unread_s = 0.0 if unread is None else unread(slo_s <= EXACT_UNREAD_SLO_MAX_S)
        started = time.monotonic() - unread_s
        # The reply must reach the client within the SLO, so the answer or default is due a
        # little before it: writing and sending the reply takes time too.
        deadline = started + slo_s - min(slo_s * REPLY_MARGIN_SHARE, REPLY_MARGIN_MAX_S)
        default = _default_value(app.default_output)
        refusal, admitted_by = self._refuse_unparsed(app_name, body, binary, deadline, default)
        if refusal is not None:
            refused_model, prediction = refusal
            # At its deadline, as the SLO's timer would answer it (see below); an expired
            # request's deadline has passed, so it is answered at once.
            await _wait_until([], deadline)
            self._record(app_name, refused_model, [prediction], started, unread_s)
            return False, [prediction]
        input_type = parse_input_type(app.input_type)
        if binary is not None:
            request = parse_binary_request(body, input_type, binary)
        else:
            request = parse_predict_request(body, input_type, self._max_batch_inputs)
        model_id = await self._route(app_name, request.version)
        ids = [next(self._query_ids) for _ in request.inputs]
        if model_id is None:
            predictions = [Prediction(i, default, True, NO_MODELS_EXPLANATION) for i in ids]
            self._record(app_name, None, predictions, started, unread_s)
            return request.is_batch, predictions

        name, version = model_id
        futures: list[asyncio.Future[str] | None] = []
        queue = self._router.queue(name, version)
        # A request that waited unread past its SLO is not queued: it would only delay the
        # queries behind it.
        expired = deadline <= time.monotonic()
        hits = overloaded = joined = 0
        for item in request.inputs:
            key = (name, version, item)
            future = self._cache.lookup(key)
            if future is not None:
                if future.done():
                    hits += 1
                else:
                    joined += 1
            if future is None and queue is not None:
                if expired:
                    future = self._cache.start(key)
                    future.set_exception(QueryExpired())
                else:
                    # The first query was admitted before parsing: not judged twice.
                    future = self._queue_query(queue, key, deadline, queue is admitted_by)
                    admitted_by = None
                    if future.done():
                        overloaded += 1
            futures.append(future)
        self._model_metrics_of(name, version).cache_hit_ratio.increment(hits, len(request.inputs))
        if overloaded:
            self._metrics.counter(f"model:{name}:{version}:overloaded").increment(overloaded)
        pending = [f for f in futures if f is not None and not f.done()]
        if overloaded:
            # A refused query gets its default when its SLO ends, as Clipper's timer gave it,
            # not at once: a client that retries at once would otherwise send its next request
            # at once too, and the frontend would spend the model's core reading refusals.
            await _wait_until([], deadline)
        elif pending:
            await _wait_until(pending, deadline)
            if joined:
                await self._requeue_twins_shed_early(
                    name, version, request.inputs, futures, deadline
                )

        # An answer that came back in time is still late if the handler only runs when the SLO
        # has (all but) passed (the loop was busy, or the process off the CPU), and the SLO
        # promises the default instead of a late answer, whatever made it late. Past the
        # deadline but short of that, the reply margin is there for it.
        late = time.monotonic() > started + slo_s - min(slo_s * LATE_REPLY_SHARE, LATE_REPLY_MAX_S)
        late_replies = 0
        predictions = []
        for query_id, future in zip(ids, futures, strict=True):
            prediction = self._settle(query_id, future, default)
            if late and not prediction.default:
                prediction = Prediction(query_id, default, True, SLO_EXPLANATION)
                late_replies += 1
            predictions.append(prediction)
        if late_replies:
            self._late_replies.increment(late_replies)
        self._record(app_name, model_id, predictions, started, unread_s)
        return request.is_batch, predictions

    async def _requeue_twins_shed_early(
        self,
        name: str,
        version: str,
        items: list[bytes],
        futures: list[asyncio.Future[str] | None],
        deadline: float,
    ) -> None:
        """Queues again, with this request's deadline, each query that waited on an identical
        one in flight which the queue then shed (expired, or refused as overloaded), and waits
        for them.

        That twin had a deadline of its own, earlier (another app's shorter SLO, or a client
        that asked first), so its fate says nothing about this query's: an app with a 5 s SLO
        got its SLO default after 23 ms, from a twin sent by an app with a 30 ms SLO.
        """
        queue = self._router.queue(name, version)
        if queue is None:
            return
        pending: list[asyncio.Future[str]] = []
        for i, future in enumerate(futures):
            if future is None or not future.done() or future.cancelled():
                continue
            if not isinstance(future.exception(), (QueryExpired, Overloaded)):
                continue
            if deadline <= time.monotonic():
                return
            key = (name, version, items[i])
            again = self._cache.lookup(key) or self._queue_query(queue, key, deadline, False)
            futures[i] = again
            if not again.done():
                pending.append(again)
        if pending:
            await _wait_until(pending, deadline)

    def _queue_query(
        self, queue: ModelQueue, key: CacheKey, deadline: float, admitted: bool
    ) -> asyncio.Future[str]:
        """Registers a query in the cache and queues it; a refused one's future already holds
        Overloaded."""
        future = self._cache.start(key)
        try:
            queue.put(key[2], deadline, future, admitted=admitted)
        except Overloaded as e:
            future.set_exception(e)
        return future

    def _refuse_unparsed(
        self, app_name: str, body: bytes, binary: BinaryInput | None, deadline: float, default: Any
    ) -> tuple[tuple[tuple[str, str], Prediction] | None, ModelQueue | None]:
        """The default for a single-input request that the model's queue would refuse or that
        expired unread, decided before the body is parsed; else no default, and the queue of
        the current version if it admitted a query with this deadline.

        Under overload, parsing a request costs the frontend as much as answering it, so
        parsing what will be refused takes the core from the model and goodput falls. Only a
        request for the current version with one input can be answered unparsed: any other
        (or any body the byte test cannot vouch for) is parsed as usual, and its queries are
        refused one by one. No cached answer is looked for: its key is the parsed input.
        """
        model_id = self._resolve(app_name, None)
        if model_id is None:
            return None, None
        queue = self._router.queue(*model_id)
        if queue is None:
            return None, None
        expired = deadline <= time.monotonic()
        if not expired and queue.admits(deadline):
            return None, queue
        single = binary.version is None if binary is not None else _plain_single_input(body)
        if not single:
            return None, None
        if expired:
            explanation = SLO_EXPLANATION
        else:
            explanation = OVERLOADED_EXPLANATION
            self._metrics.counter(f"model:{model_id[0]}:{model_id[1]}:overloaded").increment(1)
        return (model_id, Prediction(next(self._query_ids), default, True, explanation)), None

    async def _route(self, app_name: str, version: str | None) -> tuple[str, str] | None:
        try:
            model_id = self._resolve(app_name, version)
            if model_id is not None and self._router.queue(*model_id) is not None:
                return model_id
        except QueryError:
            pass
        # The state may change while the freshness check awaits Redis: resolve again after it.
        await self._ensure_fresh()
        return self._resolve(app_name, version)

    def _resolve(self, app_name: str, version: str | None) -> tuple[str, str] | None:
        model = self._router.linked_model(app_name)
        if version is not None:
            if model is None:
                raise QueryError(
                    QUERY_PROCESSING_ERROR,
                    f"No model is linked to application {app_name}, so version {version} "
                    "cannot be selected",
                )
            if self._router.model(model, version) is None:
                raise QueryError(
                    QUERY_PROCESSING_ERROR,
                    f"Requested version: {version} does not exist for model: {model}",
                )
            return model, version
        if model is None:
            return None
        current = self._router.current_version(model)
        return (model, current) if current is not None else None

    @staticmethod
    def _settle(query_id: int, future: asyncio.Future[str] | None, default: Any) -> Prediction:
        if future is None:
            return Prediction(query_id, default, True, NO_MODELS_EXPLANATION)
        if not future.done():
            return Prediction(query_id, default, True, SLO_EXPLANATION)
        error = future.exception()
        if error is None:
            return Prediction(query_id, output_value(future.result()), False)
        if isinstance(error, QueryExpired):
            return Prediction(query_id, default, True, SLO_EXPLANATION)
        if isinstance(error, QueryFailed):
            return Prediction(query_id, default, True, f"Model failed to predict: {error}")
        if isinstance(error, Overloaded):
            return Prediction(query_id, default, True, OVERLOADED_EXPLANATION)
        return Prediction(query_id, default, True, NO_MODELS_EXPLANATION)

    def _record(
        self,
        app_name: str,
        model_id: tuple[str, str] | None,
        predictions: list[Prediction],
        started: float,
        unread_s: float,
    ) -> None:
        n = len(predictions)
        defaults = sum(1 for p in predictions if p.default)
        latency_us = (time.monotonic() - started) * 1e6
        self._total_predictions.increment(n)
        self._cache_lookups.increment(n if model_id else 0)
        app = self._app_metrics_of(app_name)
        app.num_predictions.increment(n)
        app.default_ratio.increment(defaults, n)
        app.throughput.mark(n)
        app.latency.insert(latency_us)
        self._unread_wait.insert(unread_s * 1e6)
        hit_ratio = self._cache_hit_ratio
        hit_ratio.numerator, hit_ratio.denominator = self._cache.hits, self._cache.lookups
        if model_id is not None:
            model = self._model_metrics_of(*model_id)
            model.num_predictions.increment(n - defaults)
            model.throughput.mark(n - defaults)
            model.latency.insert(latency_us)

    def _app_metrics_of(self, app_name: str) -> _AppMetrics:
        found = self._app_metrics.get(app_name)
        if found is None:
            m = self._metrics
            found = self._app_metrics[app_name] = _AppMetrics(
                m.counter(f"app:{app_name}:num_predictions"),
                m.ratio(f"app:{app_name}:default_prediction_ratio"),
                m.meter(f"app:{app_name}:prediction_throughput"),
                m.histogram(f"app:{app_name}:prediction_latency"),
            )
        return found

    def _model_metrics_of(self, name: str, version: str) -> _ModelMetrics:
        found = self._model_metrics.get((name, version))
        if found is None:
            m = self._metrics
            prefix = f"model:{name}:{version}"
            found = self._model_metrics[(name, version)] = _ModelMetrics(
                m.counter(f"{prefix}:num_predictions"),
                m.meter(f"{prefix}:prediction_throughput"),
                m.histogram(f"{prefix}:prediction_latency"),
                m.ratio(f"{prefix}:cache_hit_ratio"),
            )
        return found


async def _wait_until(futures: list[asyncio.Future[str]], deadline: float) -> None:
    """Returns when every future is done or the deadline (on the loop's monotonic clock) comes;
    with no futures, at the deadline.

    asyncio.wait does the same with sets, a per-call timeout computation and more callbacks;
    this runs once per request, so its cost is the frontend's.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)

    def one_done(_: asyncio.Future[str]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not waiter.done():
            waiter.set_result(None)

    def timed_out() -> None:
        if not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    timer = loop.call_at(deadline, timed_out)
    try:
        await waiter
    finally:
        timer.cancel()
        for future in futures:
            future.remove_done_callback(one_done)


def _plain_single_input(body: bytes) -> bool:
    """Whether the body, if valid, is a request with one input for the current version.

    A JSON key may be written with escapes, so a body with any escape is not vouched for.
    """
    return (
        b'"input"' in body
        and b'"input_batch"' not in body
        and b'"version"' not in body
        and b"\\" not in body
    )


@functools.lru_cache(maxsize=256)
def _default_value(text: str) -> Any:
    # Parsed once per distinct text: a default that is not JSON costs an exception to parse.
    # The value is only serialized, never changed, so sharing it is safe.
    return output_value(text)


def record_expired(
    metrics: MetricsRegistry, model_name: str, model_version: str, count: int
) -> None:
    """Queries that a model's queue gave the SLO default before any replica took them."""
    metrics.counter(f"model:{model_name}:{model_version}:expired").increment(count)


def record_batch(
    metrics: MetricsRegistry, model_name: str, model_version: str, stats: BatchStats
) -> None:
    """Batch metrics, reported by replica workers after each batch."""
    metrics.meter("internal:aggregate_model_throughput").mark(stats.batch_size)
    # Totals, so that a mean batch size over any interval is a difference of two readings.
    metrics.counter(f"model:{model_name}:{model_version}:batches").increment(1)
    metrics.counter(f"model:{model_name}:{model_version}:batched_queries").increment(
        stats.batch_size
    )
    metrics.counter(f"model:{model_name}:{model_version}:late_answers").increment(
        stats.late_answers
    )
    metrics.histogram(f"model:{model_name}:{model_version}:batch_size", "queries").insert(
        stats.batch_size
    )
    metrics.histogram(f"model:{model_name}:{model_version}:batch_latency").insert(
        stats.latency_s * 1e6
    )
