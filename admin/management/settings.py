"""The management service's settings, read from CLIPPER_MGMT_* environment variables."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class ManagementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPPER_MGMT_")

    host: str = "0.0.0.0"
    port: int = 1338
    redis_host: str = "localhost"
    redis_port: int = 6379
    # A pipe the parent passed: "ready <port>" is written to it once the server listens.
    ready_fd: int | None = None
    log_level: str = "INFO"
