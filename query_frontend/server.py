"""The query frontend's HTTP layer: routes, the error middleware, and create_app()."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import cast

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from management.store import ClusterState, Store
from query_frontend.arrival import ArrivalClock
from query_frontend.cache import PredictionCache
from query_frontend.codec import BinaryInput, binary_input, json_error
from query_frontend.errors import NOT_FOUND, QueryError, internal_error
from query_frontend.loop_lag import LoopLag
from query_frontend.metrics import MetricsRegistry
from query_frontend.peers import SNAPSHOT_PATH, Peers
from query_frontend.predict_protocol import PredictCall
from query_frontend.predictor import Predictor, record_batch, record_expired
from query_frontend.routing import ClusterWatcher, Router
from query_frontend.settings import FrontendSettings

logger = logging.getLogger(__name__)

PREDICTOR_KEY = web.AppKey("predictor", Predictor)
METRICS_KEY = web.AppKey("metrics", MetricsRegistry)
WATCHER_KEY = web.AppKey("watcher", ClusterWatcher)
PEERS_KEY = web.AppKey("peers", Peers)
# Answers a predict request; PredictSite calls it too, for the requests it reads itself.
PREDICT_CALL_KEY: web.AppKey[PredictCall] = web.AppKey("predict_call")
# The largest request body the frontend reads.
CLIENT_MAX_SIZE = 256 * 1024 * 1024


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except QueryError as e:
        error = e
    except web.HTTPException as e:
        if e.status < 400:
            raise
        cause = f"{request.method} {request.path}: {e.reason}"
        error = QueryError(e.reason, cause, status=e.status)
    except Exception:
        logger.exception("unexpected error in %s %s", request.method, request.path)
        error = internal_error()
    return web.Response(body=error.body(), status=error.status, content_type="application/json")


async def predict(request: web.Request) -> web.Response:
    """A predict request that reached aiohttp: one on a connection that PredictSite handed
    over, or any with predict_protocol "aiohttp"."""
    transport = cast(asyncio.Transport, request.transport)
    binary = binary_input(request.headers.get("Content-Type", ""), request.query_string)
    body = await request.app[PREDICT_CALL_KEY](
        request.match_info["app"], await request.read(), transport, binary
    )
    return web.Response(body=body, content_type="application/json")


def _predict_call(predictor: Predictor, arrival: ArrivalClock, loop_lag: LoopLag) -> PredictCall:
    async def call(
        app_name: str, body: bytes, transport: asyncio.Transport, binary: BinaryInput | None
    ) -> bytes:
        # The query's SLO counts from when the request reached this host, not from now: it
        # may have waited in its socket while the loop was busy or the process was off the CPU.
        unread = partial(arrival.wait_seconds, transport, loop_lag.seconds)
        is_batch, predictions = await predictor.predict(app_name, body, unread, binary)
        if is_batch and len(predictions) != 1:
            return orjson.dumps({"batch_predictions": [p.to_json() for p in predictions]})
        return orjson.dumps(predictions[0].to_json())

    return call


async def update(request: web.Request) -> web.Response:
    """Feedback, accepted and dropped: the default selection policy learns nothing from it."""
    app = request.match_info["app"]
    if not request.app[PREDICTOR_KEY].known_app(app):
        raise QueryError(NOT_FOUND, f"No application named '{app}' exists", status=404)
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError as e:
        raise json_error(f"JSON parse error: {e}") from None
    if not isinstance(doc, dict) or not {"uid", "input", "label"} <= doc.keys():
        raise json_error("JSON object does not have required keys uid, input and label")
    return web.Response(text="Feedback received? 1", content_type="application/json")


async def _all_workers_metrics(app: web.Application) -> MetricsRegistry:
    """This process's metrics, merged with its sibling workers' when the port is shared."""
    local = app[METRICS_KEY]
    peers = app[PEERS_KEY]
    if not peers.ports:
        return local
    return MetricsRegistry.merged([local.snapshot(), *await peers.snapshots()])


async def metrics(request: web.Request) -> web.Response:
    return _json((await _all_workers_metrics(request.app)).report())


async def metrics_snapshot(request: web.Request) -> web.Response:
    return _json(request.app[METRICS_KEY].snapshot())


async def prometheus_metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=(await _all_workers_metrics(request.app)).prometheus_text(),
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def health(request: web.Request) -> web.Response:
    ready = request.app[WATCHER_KEY].synced.is_set()
    return _json({"ready": ready}, status=200 if ready else 503)


def create_app(settings: FrontendSettings, peer_ports: list[int] | None = None) -> web.Application:
    """Builds the frontend's object graph; Redis and the cluster watcher live in cleanup_ctx.

    peer_ports are the metrics ports of the sibling workers sharing this frontend's port.
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    registry = MetricsRegistry()
    peers = Peers(peer_ports or [])
    cache = PredictionCache(settings.prediction_cache_size_bytes)
    router = Router(
        partial(record_batch, registry),
        settings.max_adaptive_batch_size,
        settings.max_batch_wait_s,
        settings.max_queue_len,
        partial(record_expired, registry),
    )
    redis = aioredis.Redis(
        host=settings.redis_host, port=settings.redis_port, decode_responses=True
    )

    def apply(state: ClusterState) -> None:
        router.apply(state)
        predictor.forget_removed(state.apps.keys(), state.models.keys())

    # Unique even for frontends sharing a host's name and pid numbers (containers on the host's
    # network); the host and pid make it one a person can find.
    frontend_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    watcher = ClusterWatcher(Store(redis), apply, settings.resync_interval_s, frontend_id)
    loop_lag = LoopLag()
    predictor = Predictor(router, cache, registry, watcher.ensure_fresh, settings.max_batch_inputs)
    app[PREDICTOR_KEY] = predictor
    app[METRICS_KEY] = registry
    app[WATCHER_KEY] = watcher
    app[PEERS_KEY] = peers
    app[PREDICT_CALL_KEY] = _predict_call(predictor, ArrivalClock(), loop_lag)
    # The predictor registers the per-request metrics; these are reported from the first scrape.
    registry.meter("internal:aggregate_model_throughput")
    registry.histogram("internal:rpc_request_queueing_delay")

    async def cluster_sync(app: web.Application) -> AsyncIterator[None]:
        watcher.start()
        await peers.start()
        yield
        await peers.close()
        await watcher.stop()
        await router.close()
        await redis.aclose()

    async def loop_lag_ticks(app: web.Application) -> AsyncIterator[None]:
        loop_lag.start()
        yield
        loop_lag.stop()

    app.cleanup_ctx.append(cluster_sync)
    app.cleanup_ctx.append(loop_lag_ticks)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/prometheus", prometheus_metrics)
    app.router.add_get("/healthz", health)
    app.router.add_post("/{app}/predict", predict)
    app.router.add_post("/{app}/predict/", predict)
    app.router.add_post("/{app}/update", update)
    app.router.add_post("/{app}/update/", update)
    return app


def create_internal_app(registry: MetricsRegistry) -> web.Application:
    """What a worker shows its siblings on loopback: its raw metrics, to be merged."""
    app = web.Application()
    app[METRICS_KEY] = registry
    app.router.add_get(SNAPSHOT_PATH, metrics_snapshot)
    return app
