"""The query frontend's settings, read from CLIPPER_QF_* environment variables."""

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from management.event_loop import EventLoopName
from management.setting_types import (
    Bytes,
    Count,
    ListenPort,
    LogLevel,
    Port,
    PositiveSeconds,
    Seconds,
)

DEFAULT_PREDICTION_CACHE_SIZE_BYTES = 33554432


class FrontendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPPER_QF_")

    host: str = "0.0.0.0"
    port: ListenPort = 1337
    redis_host: str = "localhost"
    redis_port: Port = 6379
    prediction_cache_size_bytes: Bytes = DEFAULT_PREDICTION_CACHE_SIZE_BYTES
    # A full re-read of the cluster state, in case a change event was lost.
    resync_interval_s: PositiveSeconds = 5.0
    # Largest batch the adaptive policy may choose for a model registered with batch_size -1.
    max_adaptive_batch_size: Count = 256
    # Longest a replica waits for a shallow queue to fill a batch: only when batches of what is
    # queued would keep it too busy to keep up, and never past the deadline budget.
    max_batch_wait_s: Seconds = 0.02
    # Queries one model version may hold waiting; beyond it, new ones get an overload default.
    max_queue_len: Count = 10000
    # Inputs one request's input_batch may hold; a larger one is refused with a 400. Parsing
    # and queueing take a few microseconds per input, during which no other request is read.
    max_batch_inputs: Count = 10000
    # A pipe the parent passed: "ready <port>" is written to it once the server listens.
    ready_fd: int | None = None
    # Worker processes sharing the port, under a supervisor that restarts any that dies; with
    # 1, the process serves by itself. Each worker has its own queues and cache.
    workers: Count = 1
    # Given to each worker by the supervisor: its listening socket, the loopback socket on
    # which it shows its metrics to the other workers, every worker's such port, and a pipe
    # whose end means the supervisor is gone.
    listen_fd: int | None = None
    internal_fd: int | None = None
    peer_ports: str = ""
    lifeline_fd: int | None = None
    log_level: LogLevel = "INFO"
    # The event loop: uvloop runs the loop itself in C, which takes about a tenth off the
    # frontend's CPU per request; "asyncio" is the standard library's.
    event_loop: EventLoopName = "uvloop"
    # Who reads the public port: "fast" parses each connection's requests itself (httptools)
    # and answers predict requests without aiohttp's request objects, about half of the
    # frontend's CPU per no-op request, and hands any other request to aiohttp; "aiohttp"
    # serves them all through aiohttp.
    predict_protocol: Literal["fast", "aiohttp"] = "fast"
