"""The management service's settings, read from CLIPPER_MGMT_* environment variables."""

from pydantic_settings import BaseSettings, SettingsConfigDict

from management.setting_types import ListenPort, LogLevel, Port


class ManagementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPPER_MGMT_")

    host: str = "0.0.0.0"
    port: ListenPort = 1338
    redis_host: str = "localhost"
    redis_port: Port = 6379
    # A pipe the parent passed: "ready <port>" is written to it once the server listens.
    ready_fd: int | None = None
    log_level: LogLevel = "INFO"
