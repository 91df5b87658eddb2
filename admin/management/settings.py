"""The management service's settings, read from CLIPPER_MGMT_* environment variables."""

from pydantic_settings import BaseSettings, SettingsConfigDict

from management.service import DEFAULT_FRONTEND_SYNC_TIMEOUT_S
from management.setting_types import ListenPort, LogLevel, Port, Seconds


class ManagementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPPER_MGMT_")

    host: str = "0.0.0.0"
    port: ListenPort = 1338
    redis_host: str = "localhost"
    redis_port: Port = 6379
    # A pipe the parent passed: "ready <port>" is written to it once the server listens.
    ready_fd: int | None = None
    log_level: LogLevel = "INFO"
    # A change that reroutes queries (a version switch, a removal) returns once every live
    # query frontend routes by it, or after this long; 0 returns at once.
    frontend_sync_timeout_s: Seconds = DEFAULT_FRONTEND_SYNC_TIMEOUT_S
