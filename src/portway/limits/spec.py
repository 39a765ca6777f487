"""What a limit is: one LimitSpec (the limits a key, a user or a default carries) and the Limit objects built
from it per scope. Money is counted in integer micro-USD so reserve/settle cycles never drift."""

from __future__ import annotations

import enum
import math
import operator
from dataclasses import dataclass, fields
from typing import Any, get_args

from portway.config import BudgetPeriod

MICRO_USD = 1_000_000
BUDGET_PERIODS = frozenset(get_args(BudgetPeriod))


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Limits attached to a key, a user or a default; None means "no limit of this kind".

    The value of ``config.LimitFields`` (same names, same order), kept a plain frozen dataclass because the
    hot path hashes it (it keys the cache of built Limits).
    """

    rpm: int | None = None
    tpm: int | None = None
    daily_requests: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"  # "daily" | "monthly" | "total"

    @classmethod
    def of(cls, source: object) -> LimitSpec | None:
        """The limits of anything carrying the five fields (a stored key, user or policy, an admin body, a
        configured default), or None when it sets none.

        None matters: it is what lets ``limits.per_user`` stand in for a user without limits (a LimitSpec of
        all-None fields is truthy, and used to hide the default).
        """
        rpm, tpm, daily, budget, period = _read_limits(source)
        if rpm is None and tpm is None and daily is None and budget is None:
            return None
        return cls(rpm, tpm, daily, budget, period)


LIMIT_FIELDS = tuple(f.name for f in fields(LimitSpec))
_read_limits = operator.attrgetter(*LIMIT_FIELDS)  # a JWT caller's spec is read on every request


def limit_values(source: object) -> dict[str, Any]:
    """The five limit fields of ``source`` by name: to copy an admin body into a stored row, or a row into
    its JSON view."""
    return {name: getattr(source, name) for name in LIMIT_FIELDS}


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
