"""Process settings, read from ``RECONCILER_*`` environment variables and a secrets directory.

Secrets (tokens, signing secrets, database URL) may also be mounted as files in
``RECONCILER_SECRETS_DIR`` (default ``/run/secrets/reconciler``), one file per setting, named
like the environment variable in any case (``reconciler_admin_token`` or
``RECONCILER_ADMIN_TOKEN``); pydantic-settings ignores a file named after the bare field. The
Helm chart mounts them that way and a chart test loads them through ``load_settings``.
Environment variables win over files, which is pydantic-settings' order.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRETS_DIR = "/run/secrets/reconciler"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_",
        extra="ignore",
        case_sensitive=False,
    )

    # OpenMeter
    openmeter_url: str = "http://127.0.0.1:8888"
    openmeter_token: SecretStr | None = None
    openmeter_connect_timeout: float = Field(5.0, gt=0)
    openmeter_read_timeout: float = Field(15.0, gt=0)
    openmeter_max_connections: int = Field(32, ge=1)
    openmeter_read_retries: int = Field(4, ge=0, le=20)

    # Storage
    database_url: SecretStr = SecretStr("sqlite:///./reconciler.db")

    # Policy
    policy_path: Path | None = None

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # HTTP service
    http_host: str = "0.0.0.0"  # noqa: S104 - a pod must listen on its interface
    http_port: int = Field(8080, ge=1, le=65535)
    webhook_secrets: SecretStr | None = None  # one or more, separated by spaces or commas
    webhook_tolerance_seconds: int = Field(300, ge=1)
    webhook_max_body_bytes: int = Field(65536, ge=256)
    admin_token: SecretStr | None = None

    # Outbound events
    events_url: SecretStr | None = None
    events_secret: SecretStr | None = None

    # Worker
    sweep_interval_seconds: float = Field(300.0, gt=0)
    due_poll_seconds: float = Field(2.0, gt=0)
    full_sweep_hour_utc: int = Field(3, ge=0, le=23)
    concurrency: int = Field(8, ge=1, le=256)
    # While a webhook is being taken in, reconciles wait at their next OpenMeter call or store
    # write for at most this long (reconciler/engine/pacing.py); 0 turns the priority off.
    intake_priority_ms: int = Field(250, ge=0, le=10_000)
    drain_seconds: float = Field(20.0, ge=0)
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    # Demo and tests only: read "now" from this URL (the emulator's /_emulator/clock) instead of
    # the system clock, so the reconciler and an emulator whose clock was moved agree on time.
    clock_url: str | None = None

    @field_validator("openmeter_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    def webhook_secret_list(self) -> list[str]:
        if self.webhook_secrets is None:
            return []
        raw = self.webhook_secrets.get_secret_value().replace(",", " ")
        return [s for s in raw.split() if s]


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, the secrets directory and explicit overrides."""
    secrets_dir = os.environ.get("RECONCILER_SECRETS_DIR", DEFAULT_SECRETS_DIR)
    if Path(secrets_dir).is_dir():
        return Settings(_secrets_dir=secrets_dir, **overrides)
    return Settings(**overrides)
