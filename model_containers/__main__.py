"""Runs one model replica: load the model, serve it over gRPC, register, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import ValidationError

from management.event_loop import loop_factory
from management.input_types import parse_input_type
from management.setting_types import settings_error
from management.store import Store
from model_containers.loading import create_model
from model_containers.metrics import ReplicaMetrics, use_for_user_metrics
from model_containers.model import ModelLoadError
from model_containers.registration import ReplicaRegistration
from model_containers.server import ModelServicer, ReplicaServer
from model_containers.settings import ReplicaSettings
from model_containers.watchdog import PredictWatchdog

logger = logging.getLogger("model_containers")

EXIT_LOAD_FAILED = 3
EXIT_PREDICT_STUCK = 4


def _exit_stuck(ran_s: float) -> None:
    logger.critical(
        "predict has run for %.0f s, past CLIPPER_PREDICT_TIMEOUT_S: exiting, so that this "
        "replica is started anew (the call cannot be interrupted)",
        ran_s,
    )
    logging.shutdown()
    # Not sys.exit: the stuck call holds a thread that would keep the process alive.
    os._exit(EXIT_PREDICT_STUCK)


async def serve(settings: ReplicaSettings) -> None:
    input_type = parse_input_type(settings.input_type)
    metrics = ReplicaMetrics()
    # The model's code may add its own metrics as soon as it is unpickled.
    use_for_user_metrics(metrics.user)
    model = create_model(Path(settings.model_path))
    await asyncio.get_running_loop().run_in_executor(None, model.load)
    metrics_address = ""
    if settings.metrics_port >= 0:
        metrics_port = metrics.serve(settings.host, settings.metrics_port)
        metrics_address = f"{settings.advertise_host}:{metrics_port}"
    watchdog = None
    if settings.predict_timeout_s > 0:
        watchdog = PredictWatchdog(settings.predict_timeout_s, _exit_stuck)
    servicer = ModelServicer(
        model, settings.model_name, settings.model_version, input_type, metrics, watchdog
    )
    server = ReplicaServer(servicer, settings.host, settings.port)
    port = await server.start()
    logger.info(
        "serving %s:%s on port %d (metrics at %s)",
        settings.model_name,
        settings.model_version,
        port,
        metrics_address or "off",
    )

    redis = aioredis.Redis(host=settings.redis_ip, port=settings.redis_port, decode_responses=True)
    registration = ReplicaRegistration(
        Store(redis),
        settings.model_name,
        settings.model_version,
        input_type.canonical_name,
        f"{settings.advertise_host}:{port}",
        os.getpid(),
        settings.heartbeat_interval_s,
        settings.heartbeat_ttl_s,
        metrics_address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with registration:
        if settings.ready_fd is not None:
            os.write(settings.ready_fd, f"ready {port}\n".encode())
            os.close(settings.ready_fd)
        await stop.wait()
        logger.info("stopping: leaving routing, then finishing in-flight work")
    await server.stop(settings.shutdown_grace_s)
    metrics.close()
    await redis.aclose()


def main() -> None:
    try:
        settings = ReplicaSettings()
    except ValidationError as e:
        sys.exit(settings_error(e, "CLIPPER_"))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except ModelLoadError as e:
        logger.error("model failed to load: %s", e)
        print(f"model failed to load: {e}", file=sys.stderr)
        sys.exit(EXIT_LOAD_FAILED)


if __name__ == "__main__":
    main()
