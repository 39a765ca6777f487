"""Process settings from PORTWAY_* environment variables (the YAML config holds providers and routing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTWAY_", extra="ignore")

    config: Path | None = Field(default=None, description="gateway.yaml path (PORTWAY_CONFIG)")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path("./data")
    master_key: SecretStr | None = None
    database_url: str | None = None  # default: sqlite+aiosqlite:///<data_dir>/portway.db
    redis_url: str | None = None
    redis_timeout: float = Field(default=0.1, gt=0)  # seconds per Redis operation before failing open/closed
    redis_connect_timeout: float = Field(default=2.0, gt=0)  # connecting (at start and after an outage)
    log_level: LogLevel = "info"  # portway's own loggers; uvicorn's too
    # "json": one JSON object per log line, an access line per request, secrets redacted (telemetry/logs.py).
    log_format: Literal["text", "json"] = "text"
    # The HTTP/1.1 protocol: portway's own (http_server.py), or uvicorn's ("httptools", "h11") as a fallback.
    http: Literal["portway", "httptools", "h11"] = "portway"
    secret_key: SecretStr | None = (
        None  # hashes virtual keys, seals rotating keys; else <data_dir>/secret.key
    )
    jwt_secret: SecretStr | None = None  # signs user tokens (HS256); else <data_dir>/jwt.key
    jwt_expire_seconds: int = Field(default=86_400, gt=0)
    login_mode: Literal["password", "email_only"] = "password"  # email_only: trusted networks only
    admin_emails: str = ""  # comma-separated; these users are admins
    environment: str = Field(default="production", max_length=64)  # GET /ready's `environment` (seed 003)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'portway.db').resolve()}"
