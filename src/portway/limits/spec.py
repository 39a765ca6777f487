"""What a limit is: one LimitSpec (the limits a key, a user or a default carries) and the Limit objects built
from it per scope. Money is counted in integer micro-USD so reserve/settle cycles never drift."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

MICRO_USD = 1_000_000
BUDGET_PERIODS = frozenset({"daily", "monthly", "total"})


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Limits attached to a key or a user; None means "no limit of this kind"."""

    rpm: int | None = None
    tpm: int | None = None
    daily_requests: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"  # "daily" | "monthly" | "total"


class LimitKind(enum.StrEnum):
    RPM = "rpm"
    TPM = "tpm"
    DAILY_REQUESTS = "daily_requests"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # "ip:1.2.3.4", "key:<key-id>", "user:<user-id>"
    kind: LimitKind
    limit: float  # requests, tokens or USD
    period: str = ""  # BUDGET only: "daily" | "monthly" | "total"
    fail_open: bool | None = None  # None: rate limits fail open, BUDGET fails closed

    def __post_init__(self) -> None:
        if not self.scope:
            raise ValueError("limit scope must not be empty")
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ValueError(f"limit for {self.scope} must be a finite number >= 0, got {self.limit!r}")
        if self.kind is LimitKind.BUDGET and self.period not in BUDGET_PERIODS:
            raise ValueError(f"budget period must be one of {sorted(BUDGET_PERIODS)}, got {self.period!r}")

    @property
    def fails_open(self) -> bool:
        if self.fail_open is not None:
            return self.fail_open
        return self.kind is not LimitKind.BUDGET


def to_micro(usd: float) -> int:
    # ``usd > 0`` is False for NaN too, so NaN counts as nothing without a math.isnan call.
    return round(usd * MICRO_USD) if usd > 0 else 0
