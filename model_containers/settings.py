"""A replica's settings, from Clipper's CLIPPER_* environment variables."""

from typing import Annotated, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from management.event_loop import EventLoopName
from management.setting_types import ListenPort, LogLevel, Port, PositiveSeconds, Seconds


class ReplicaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPPER_")

    model_name: str
    model_version: str
    input_type: str
    model_path: str = "/model"
    host: str = "0.0.0.0"
    port: ListenPort = 7000
    # The address frontends dial; on one host or with host networking, loopback.
    advertise_host: str = "127.0.0.1"
    # Prometheus metrics (clipper_mc_*); 0 picks a free port, -1 turns them off.
    metrics_port: Annotated[int, Field(ge=-1, le=65535)] = 1390
    redis_ip: str = "localhost"
    redis_port: Port = 6379
    heartbeat_interval_s: PositiveSeconds = 1.0
    # The heartbeat runs in Python, so a model call that holds the GIL (a regular expression,
    # a C extension, encoding a reply of hundreds of MB) holds it back. A dead replica is found
    # sooner anyway, by the connection that closed; the ttl covers one that went silent.
    heartbeat_ttl_s: PositiveSeconds = 30.0
    shutdown_grace_s: Seconds = 10.0
    # A predict call that runs longer than this makes the replica exit, to be started anew by
    # its keeper or Docker: a model stuck in a call would fail every batch sent to it. Longer
    # than a frontend waits for a batch (its deadline plus 30 s), so that the batch is failed
    # there, not retried on another replica to get stuck again. 0 turns it off.
    predict_timeout_s: Seconds = 120.0
    # A pipe the parent passed: "ready <port>" is written to it once the replica serves.
    ready_fd: int | None = None
    log_level: LogLevel = "INFO"
    # The loop that keeps the registration alive (gRPC calls run in the server's threads);
    # uvloop runs it in C, "asyncio" is the standard loop.
    event_loop: EventLoopName = "uvloop"

    @model_validator(mode="after")
    def _beats_within_ttl(self) -> Self:
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"CLIPPER_HEARTBEAT_TTL_S ({self.heartbeat_ttl_s}) must be longer than "
                f"CLIPPER_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s}), or the replica's "
                f"record expires between two heartbeats"
            )
        return self
