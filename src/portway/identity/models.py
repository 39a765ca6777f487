"""Validated inputs of the identity services (admin API bodies, CLI arguments). Extra fields are refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from portway.config import BudgetPeriod, LimitFields
from portway.limits.spec import LIMIT_FIELDS

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_METADATA_BYTES = 8 * 1024
MIN_PERIOD_SECONDS = 1.0
# Every number is bounded where it is parsed (limits: see config.LimitFields); durations keep every derived
# timestamp inside datetime's range.
MAX_SECONDS = 100 * 366 * 86_400.0  # a century
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def check_text(value: str) -> str:
    """Text every database stores: no NUL (Postgres refuses it) and no unpaired surrogate (not UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no unpaired surrogates)") from None
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    check_text(item)
        return value


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL_RE.match(email):
        raise ValueError("not a valid email address")
    return email


def _utc(value: datetime | None) -> datetime | None:
    # A naive timestamp is read as UTC: the API speaks UTC only.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


ModelPatterns = list[str] | None


def _check_models(value: ModelPatterns) -> ModelPatterns:
    if value is None:
        return None
    if len(value) > 200 or any(not m or len(m) > 256 for m in value):
        raise ValueError("allowed_models: up to 200 non-empty patterns of at most 256 characters")
    return list(dict.fromkeys(value))  # de-duplicated, order kept


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        # orjson refuses what JSON columns cannot hold portably: integers beyond 64 bits, surrogates, depth.
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"metadata is not storable JSON ({exc})") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must serialize to at most {MAX_METADATA_BYTES} bytes of JSON")
    if b"\\u0000" in encoded:
        raise ValueError("metadata must not contain NUL characters")
    return value


class LimitInput(LimitFields, _Input):
    """The limits of a new key, user or policy (0 is a real limit: it blocks)."""


class LimitPatch(LimitInput):
    """Limit changes: a field sent as null removes that limit; a field not sent keeps it."""

    # The one field a patch widens: null puts the period back to the default ("total"), as it cannot be
    # removed like a limit can. (mypy objects to widening an inherited field; pydantic supports it.)
    budget_period: BudgetPeriod | None = Field(  # type: ignore[assignment]
        None, description="null: back to the default, total"
    )

    def changes(self) -> dict[str, Any]:
        """The limit columns to write (other fields of subclasses are the caller's business)."""
        values = self.model_dump(include=set(LIMIT_FIELDS), exclude_unset=True)
        if "budget_period" in values and values["budget_period"] is None:
            values["budget_period"] = "total"  # the column is NOT NULL; "total" is the default period
        return values


class _Expiry(_Input):
    expires_at: datetime | None = None
    expires_in_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        value = _utc(value)
        if value is not None and not EARLIEST <= value < LATEST:
            raise ValueError("must lie between 1970-01-01 and 9999-01-01 (UTC)")
        return value

    @model_validator(mode="after")
    def _one_expiry(self) -> _Expiry:
        if self.expires_at is not None and self.expires_in_seconds is not None:
            raise ValueError("send expires_at or expires_in_seconds, not both")
        return self

    def expiry(self, now: float) -> float | None:
        if self.expires_in_seconds is not None:
            return now + self.expires_in_seconds
        return None if self.expires_at is None else self.expires_at.timestamp()


class KeyCreate(LimitInput, _Expiry):
    name: str = Field(default="", max_length=256)
    user_id: str | None = Field(default=None, max_length=32)
    allowed_models: list[str] | None = None
    metadata: dict[str, Any] | None = None
    cache: bool = Field(default=False, description="the response cache for every model it asks for")

    _models = field_validator("allowed_models")(_check_models)
    _meta = field_validator("metadata")(_check_metadata)


def _no_nulls(model: BaseModel, names: tuple[str, ...]) -> None:
    # In a PATCH, null means "remove"; these fields cannot be removed, only changed.
    for name in names:
        if name in model.model_fields_set and getattr(model, name) is None:
            raise ValueError(f"{name} cannot be null")


class KeyUpdate(LimitPatch, _Expiry):
    name: str | None = Field(default=None, max_length=256)
    allowed_models: list[str] | None = None
    metadata: dict[str, Any] | None = None
    cache: bool | None = None

    _models = field_validator("allowed_models")(_check_models)
    _meta = field_validator("metadata")(_check_metadata)

    @model_validator(mode="after")
    def _required(self) -> KeyUpdate:
        _no_nulls(self, ("name", "cache"))
        return self


class PolicyCreate(LimitInput):
    name: str = Field(min_length=1, max_length=128)
    period_seconds: float | None = Field(default=None, ge=MIN_PERIOD_SECONDS, le=MAX_SECONDS)
    period_days: float | None = Field(default=None, gt=0, le=MAX_SECONDS / 86_400)
    grace_seconds: float = Field(default=0.0, ge=0, le=MAX_SECONDS)
    allowed_models: list[str] | None = None

    _models = field_validator("allowed_models")(_check_models)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _POLICY_NAME_RE.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
        return value

    @model_validator(mode="after")
    def _period(self) -> PolicyCreate:
        if self.period_seconds is not None and self.period_days is not None:
            raise ValueError("send period_seconds or period_days, not both")
        if self.period_days is not None and self.period_days * 86_400 < MIN_PERIOD_SECONDS:
            raise ValueError(f"the period must be at least {MIN_PERIOD_SECONDS:g} s")
        return self

    def period(self) -> float:
        if self.period_seconds is not None:
            return self.period_seconds
        return (self.period_days if self.period_days is not None else 7.0) * 86_400


class UserCreate(LimitInput):
    email: str
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    is_admin: bool = False
    disabled: bool = False

    _email = field_validator("email")(normalize_email)


class UserUpdate(LimitPatch):
    email: str | None = None
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    is_admin: bool | None = None
    disabled: bool | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @model_validator(mode="after")
    def _required(self) -> UserUpdate:
        _no_nulls(self, ("email", "is_admin", "disabled"))
        return self


class LoginRequest(_Input):
    email: str = Field(max_length=320)
    password: str | None = Field(default=None, max_length=1024)
