"""The `compat:` section: the five seed systems' surfaces (api/compat/, docs/compat.md), each off unless
enabled, with each seed's own defaults."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from portway.config.base import MAX_COUNT
from portway.config.base import Strict as _Strict

CHEPPU_FALLBACKS = [
    "groq/" + m
    for m in (
        "llama-3.1-8b-instant",
        "llama-3.3-70b-versatile",
        "qwen/qwen3-32b",
        "groq/compound",
        "groq/compound-mini",
        "meta-llama/llama-4-maverick-17b-128e-instruct",
        "meta-llama/llama-4-scout-17b-16e-instruct",
        "moonshotai/kimi-k2-instruct",
        "moonshotai/kimi-k2-instruct-0905",
        "openai/gpt-oss-120b",
        "openai/gpt-oss-20b",
        "openai/gpt-oss-safeguard-20b",
        "gemma2-9b-it",
        "mixtral-8x7b-32768",
    )
]
CompatAuth = Literal["key", "none"]


class _Surface(_Strict):
    enabled: bool = Field(False, description="every surface is off unless enabled")
    prefix: str = Field("", description="mount the surface under this path (empty: at the root)")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        prefix = prefix.strip().rstrip("/")
        if prefix and (not prefix.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix)):
            raise ValueError("prefix must be empty or a path like /cheppu")
        return prefix


class CheppuCompat(_Surface):
    auth: CompatAuth = Field("key", description="key: a portway key; none: anyone, limited per IP")
    chat_fallbacks: list[str] = Field(default_factory=lambda: list(CHEPPU_FALLBACKS))
    media_provider: str = Field("hf", description="the provider image and audio models are sent to")


class PastaCompat(_Surface):
    auth: CompatAuth = "key"
    providers: list[str] = Field(default_factory=lambda: ["openrouter", "hf"])
    rpm_per_ip: int = Field(30, ge=1, le=MAX_COUNT)


class PlatformCompat(_Surface):
    auth: CompatAuth = "key"
    provider: str = Field("hf", description="the provider the seed's Hugging Face model ids are sent to")


class GenzCompat(_Surface):
    tiers: dict[str, str] = Field(
        default_factory=lambda: {"fast": "fast", "balanced": "balanced", "smart": "smart"}
    )
    daily_quota: int = Field(50, ge=1, le=MAX_COUNT)
    rpm_per_ip: int = Field(60, ge=1, le=MAX_COUNT)


class KeyserverCompat(_Surface):
    chat_model: str = Field("fast", description="what POST /chat asks")
    local_model: str = Field("local/smollm2", description="what POST /local-chat asks")
    rotation_days: float = Field(7.0, gt=0, le=36_600, description="the x-api-key rotates this often")
    admin_secret: SecretStr | None = Field(None, description="the admin-secret header of GET /current-key")

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> KeyserverCompat:
        secret = self.admin_secret.get_secret_value() if self.admin_secret else ""
        if self.enabled and len(secret) < 8:
            raise ValueError("admin_secret: set a secret of at least 8 characters to enable keyserver")
        return self


class CompatConfig(_Strict):
    cheppu: CheppuCompat = Field(default_factory=CheppuCompat)
    pasta: PastaCompat = Field(default_factory=PastaCompat)
    platform: PlatformCompat = Field(default_factory=PlatformCompat)
    genz: GenzCompat = Field(default_factory=GenzCompat)
    keyserver: KeyserverCompat = Field(default_factory=KeyserverCompat)
