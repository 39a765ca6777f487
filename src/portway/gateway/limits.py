"""Admission limits: requests/tokens per minute, a daily request quota and USD budgets.

A request is admitted only if *every* limit that applies to it (per IP, per virtual key, per user) has room,
and admission takes from all of them in one atomic step: check-all-then-take-all, or take nothing.

Design
------
* Windows. RPM and TPM use a **fixed 60 s window** keyed by the window's start (epoch seconds floored to
  the minute). It is exact under concurrency with a single counter per window (cheapest for Redis: one
  INCRBY) at the price of the usual fixed-window edge: a client can burst up to 2x the limit across a
  minute boundary. DAILY_REQUESTS counts per UTC date (resets 00:00 UTC). BUDGET counts per UTC date
  (``daily``), per UTC year-month (``monthly``) or forever (``total``).
* Units. Everything is stored as integers: requests, tokens and **micro-USD** for money, so repeated
  reserve/settle cycles never drift the way float sums do.
* Reservations. ``admit`` takes 1 request / the estimated tokens / the estimated cost; ``settle`` swaps the
  estimates for real usage (TPM and BUDGET counters, never below 0); ``release`` gives tokens and cost back
  when the request never reached an upstream. Request counters stay taken: it *was* a request. A budget can
  therefore only be overshot by the difference between estimates and real cost of in-flight requests.
* Counter keys (``prefix`` is only used by Redis; the memory backend uses the same names)::

      {prefix}rpm:{window_start}:{scope}     ttl 120 s (window + 60 s for late settles)
      {prefix}tpm:{window_start}:{scope}     ttl 120 s
      {prefix}day:{YYYYMMDD}:{scope}         ttl to next UTC midnight + 1 h
      {prefix}usd:d{YYYYMMDD}:{scope}        ttl to next UTC midnight + 1 day (long streams settle late)
      {prefix}usd:m{YYYYMM}:{scope}          ttl to the next month + 1 day
      {prefix}usd:total:{scope}              ttl 400 days, refreshed on every admission (idle keys go away)

  Scope goes last because it may itself contain colons (``ip:2001:db8::1``).
* Failure policy (Redis backend). ``Limit.fail_open=None`` means the kind's default: rate limits (RPM, TPM,
  DAILY_REQUESTS) fail **open** (an outage of the counter store must not take the gateway down), BUDGET fails
  **closed** (an outage must not let spend run away). See ``limits_redis`` for the circuit breaker.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from portway import errors

if TYPE_CHECKING:
    from portway.gateway.limits_redis import RedisCounters

__all__ = [
    "Counters",
    "Decision",
    "Limit",
    "LimitKind",
    "LimitPlan",
    "LimitUsage",
    "MemoryCounters",
    "RedisCounters",
    "Reservation",
    "format_reset",
    "raise_for",
]

MICRO_USD = 1_000_000
WINDOW_SECONDS = 60
# A total budget never resets; this only keeps well-behaved clients from retrying in a tight loop.
TOTAL_BUDGET_RETRY_AFTER = 3600.0
BUDGET_PERIODS = frozenset({"daily", "monthly", "total"})

_MINUTE_TTL = 2 * WINDOW_SECONDS
_DAY = 86_400
_TOTAL_TTL = 400 * _DAY


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
        if math.isnan(self.limit) or self.limit < 0:
            raise ValueError(f"limit for {self.scope} must be >= 0, got {self.limit!r}")
        if self.kind is LimitKind.BUDGET and self.period not in BUDGET_PERIODS:
            raise ValueError(f"budget period must be one of {sorted(BUDGET_PERIODS)}, got {self.period!r}")

    @property
    def fails_open(self) -> bool:
        if self.fail_open is not None:
            return self.fail_open
        return self.kind is not LimitKind.BUDGET


@dataclass(frozen=True, slots=True)
class Slot:
    """The counter one limit uses at one moment (what an admission takes from it is in ``amounts``)."""

    key: str  # without the backend prefix
    kind: LimitKind
    cap: int  # the limit in units
    ttl: int  # seconds the counter lives after a write
    reset_at: float | None  # epoch seconds when the counter starts over; None = never


@dataclass(slots=True)
class Held:
    """One counter a reservation holds units in; ``amount`` tracks the latest settled value."""

    key: str
    kind: LimitKind
    amount: int


@dataclass(slots=True)
class Reservation:
    held: list[Held] = field(default_factory=list)
    settled: bool = False
    released: bool = False

    def adjustments(self, *, tokens: int, cost: float) -> list[tuple[str, int]]:
        """Per-counter deltas that turn the held amounts into (tokens, cost); records the new amounts."""
        tokens, micro = max(0, int(tokens)), to_micro(cost)
        deltas: list[tuple[str, int]] = []
        for h in self.held:
            if h.kind is LimitKind.TPM:
                delta, h.amount = tokens - h.amount, tokens
            elif h.kind is LimitKind.BUDGET:
                delta, h.amount = micro - h.amount, micro
            else:
                continue
            if delta:
                deltas.append((h.key, delta))
        return deltas

    def open_for_settle(self) -> bool:
        return not self.released

    def open_for_release(self) -> bool:
        # After a settle the held amounts are real usage, which a release must not give back.
        return not (self.released or self.settled)


@dataclass(slots=True)
class Decision:
    allowed: bool
    denied: Limit | None  # the first limit that refused
    retry_after: float  # seconds until the refusing limit has room (0 when allowed)
    headers: dict[str, str]  # x-ratelimit-* (OpenAI's names) from the tightest RPM and TPM limits
    reservation: Reservation
    degraded: bool = False  # the counter store was unavailable: decided by fail-open/closed policy


@dataclass(frozen=True, slots=True)
class LimitUsage:
    limit: Limit
    used: float  # requests, tokens or USD
    remaining: float
    reset_at: float | None  # epoch seconds; None for a total budget
    known: bool = True  # False when the counter store was unavailable (used is then 0)


class Counters(Protocol):
    async def admit(
        self, limits: Sequence[Limit] | LimitPlan, *, tokens: int, cost: float, now: float | None = None
    ) -> Decision: ...

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None: ...

    async def release(self, reservation: Reservation) -> None: ...

    async def usage(self, limits: Sequence[Limit], now: float | None = None) -> list[LimitUsage]: ...

    async def aclose(self) -> None: ...


def to_micro(usd: float) -> int:
    if math.isnan(usd) or usd <= 0:
        return 0
    return round(usd * MICRO_USD)


def _next_midnight(day: datetime) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def _next_month(day: datetime) -> datetime:
    if day.month == 12:
        return datetime(day.year + 1, 1, 1, tzinfo=UTC)
    return datetime(day.year, day.month + 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4)
def _calendar(day_number: int) -> tuple[str, str, float, float]:
    """(YYYYMMDD, YYYYMM, next midnight, next month start) of a UTC day, computed once a day."""
    day = datetime.fromtimestamp(day_number * _DAY, UTC)
    return f"{day:%Y%m%d}", f"{day:%Y%m}", _next_midnight(day).timestamp(), _next_month(day).timestamp()


def _cap(limit: Limit) -> int:
    if limit.kind is LimitKind.BUDGET:
        return to_micro(limit.limit)
    return math.floor(limit.limit)


def plan(limit: Limit, *, now: float) -> Slot:
    """Which counter ``limit`` uses at ``now``."""
    kind, scope, cap = limit.kind, limit.scope, _cap(limit)
    if kind in (LimitKind.RPM, LimitKind.TPM):
        start = int(now // WINDOW_SECONDS) * WINDOW_SECONDS
        return Slot(f"{kind.value}:{start}:{scope}", kind, cap, _MINUTE_TTL, float(start + WINDOW_SECONDS))
    ymd, ym, midnight, month_end = _calendar(int(now // _DAY))
    if kind is LimitKind.DAILY_REQUESTS:
        return Slot(f"day:{ymd}:{scope}", kind, cap, math.ceil(midnight - now) + 3600, midnight)
    if limit.period == "daily":
        return Slot(f"usd:d{ymd}:{scope}", kind, cap, math.ceil(midnight - now) + _DAY, midnight)
    if limit.period == "monthly":
        return Slot(f"usd:m{ym}:{scope}", kind, cap, math.ceil(month_end - now) + _DAY, month_end)
    return Slot(f"usd:total:{scope}", kind, cap, _TOTAL_TTL, None)


_HEADER_NAMES = tuple(
    (kind, (f"x-ratelimit-limit-{noun}", f"x-ratelimit-remaining-{noun}", f"x-ratelimit-reset-{noun}"))
    for kind, noun in ((LimitKind.RPM, "requests"), (LimitKind.TPM, "tokens"))
)


class LimitPlan:
    """A set of limits prepared for admission, built once per caller rather than per request.

    Which counters the limits use changes at most once a minute (day and month boundaries are minute
    boundaries too), so the slots are worked out once per minute; per request only the amounts are new.
    Counter TTLs are counted from the start of the minute, so a counter may outlive its period by up to
    a minute more than ``plan`` says: they only bound how long an idle counter takes memory.
    """

    __slots__ = ("_minute", "_slots", "header_groups", "kinds", "limits")

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = tuple(limits)
        self.kinds = tuple(limit.kind for limit in self.limits)
        # (header names, indices of the RPM or the TPM slots): x-ratelimit-* describe the tightest of each.
        self.header_groups = tuple(
            (names, found)
            for kind, names in _HEADER_NAMES
            if (found := tuple(i for i, k in enumerate(self.kinds) if k is kind))
        )
        self._minute = -1
        self._slots: tuple[Slot, ...] = ()

    def __len__(self) -> int:
        return len(self.limits)

    def slots(self, now: float) -> tuple[Slot, ...]:
        minute = int(now // WINDOW_SECONDS)
        if minute != self._minute:
            start = float(minute * WINDOW_SECONDS)
            self._slots = tuple(plan(limit, now=start) for limit in self.limits)
            self._minute = minute
        return self._slots

    def amounts(self, tokens: int, cost: float) -> list[int]:
        """What one admission takes from each slot: 1 request, the estimated tokens or micro-USD."""
        tokens, micro = max(0, int(tokens)), to_micro(cost)
        return [
            tokens if kind is LimitKind.TPM else micro if kind is LimitKind.BUDGET else 1
            for kind in self.kinds
        ]


def as_plan(limits: Sequence[Limit] | LimitPlan) -> LimitPlan:
    return limits if isinstance(limits, LimitPlan) else LimitPlan(limits)


def first_refusal(slots: Sequence[Slot], stored: Sequence[int], amounts: Sequence[int]) -> int | None:
    """Index of the first slot without room for its amount, or None if all fit.

    ``used >= cap`` refuses even a zero-amount request on an exhausted counter (a request estimated at 0
    tokens still spends tokens). Slots sharing a key see what earlier ones would take. The Redis Lua
    script mirrors this function exactly.
    """
    pending: dict[str, int] = {}
    for i, (slot, base, amount) in enumerate(zip(slots, stored, amounts, strict=True)):
        used = base + pending.get(slot.key, 0)
        if used >= slot.cap or used + amount > slot.cap:
            return i
        pending[slot.key] = pending.get(slot.key, 0) + amount
    return None


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: "20ms", "1s", "6m0s", "1h2m3.5s"."""
    ms = round(max(0.0, seconds) * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _rate_headers(lp: LimitPlan, slots: Sequence[Slot], used: Sequence[int], now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    reset_text: dict[float | None, str] = {}  # RPM and TPM share their window: format its reset once
    for (limit_h, remaining_h, reset_h), found in lp.header_groups:
        best = found[0]
        remaining = max(0, slots[best].cap - used[best])
        for i in found[1:]:
            # Tightest = least remaining; on a tie the smaller limit is the more informative one.
            left = max(0, slots[i].cap - used[i])
            if (left, slots[i].cap) < (remaining, slots[best].cap):
                best, remaining = i, left
        slot = slots[best]
        headers[limit_h] = str(slot.cap)
        headers[remaining_h] = str(remaining)
        text = reset_text.get(slot.reset_at)
        if text is None:
            text = reset_text[slot.reset_at] = format_reset((slot.reset_at or now) - now)
        headers[reset_h] = text
    return headers


def decide(
    limits: LimitPlan,
    slots: Sequence[Slot],
    stored: Sequence[int],
    amounts: Sequence[int],
    refused: int | None,
    now: float,
) -> Decision:
    """Build the Decision from counter values read *before* the (atomic) take.

    ``refused`` is the index the backend's atomic step refused at; when None the slots were taken.
    """
    if refused is not None:
        slot = slots[refused]
        retry = TOTAL_BUDGET_RETRY_AFTER if slot.reset_at is None else max(0.0, slot.reset_at - now)
        headers = _rate_headers(limits, slots, stored, now)
        return Decision(False, limits.limits[refused], retry, headers, Reservation())
    pending: dict[str, int] = {}
    after: list[int] = []
    held: list[Held] = []
    for slot, base, amount in zip(slots, stored, amounts, strict=True):
        pending[slot.key] = taken = pending.get(slot.key, 0) + amount
        after.append(base + taken)
        # Only tokens and cost are settled later; zero estimates are held too, so that settling real
        # usage still finds (and adds to) their counters.
        if slot.kind is LimitKind.TPM or slot.kind is LimitKind.BUDGET:
            held.append(Held(slot.key, slot.kind, amount))
    return Decision(True, None, 0.0, _rate_headers(limits, slots, after, now), Reservation(held))


def degraded_decision(limits: Sequence[Limit], retry_after: float) -> Decision:
    """Decide without counters: fail-open limits pass, the first fail-closed one refuses."""
    for limit in limits:
        if not limit.fails_open:
            return Decision(False, limit, retry_after, {}, Reservation(), degraded=True)
    return Decision(True, None, 0.0, {}, Reservation(), degraded=True)


def usage_of(limit: Limit, slot: Slot, stored: int | None) -> LimitUsage:
    """LimitUsage in natural units (USD for budgets); ``stored=None`` means the store was unavailable."""
    scale = MICRO_USD if limit.kind is LimitKind.BUDGET else 1
    used = max(0, stored or 0)
    return LimitUsage(
        limit=limit,
        used=used / scale,
        remaining=max(0, slot.cap - used) / scale,
        reset_at=slot.reset_at,
        known=stored is not None,
    )


class MemoryCounters(Counters):
    """Counters in one process's memory.

    ``admit`` has no await between reading and writing the counters, so on one event loop it is atomic
    without a lock. Expired windows are dropped lazily, at most once a minute.
    """

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._next_sweep = 0.0

    def _get(self, key: str, now: float) -> int:
        if self._expires.get(key, math.inf) <= now:
            self._values.pop(key, None)
            self._expires.pop(key, None)
        return self._values.get(key, 0)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + WINDOW_SECONDS
        for key in [k for k, exp in self._expires.items() if exp <= now]:
            del self._expires[key]
            self._values.pop(key, None)

    async def admit(
        self, limits: Sequence[Limit] | LimitPlan, *, tokens: int, cost: float, now: float | None = None
    ) -> Decision:
        t = time.time() if now is None else now
        self._sweep(t)
        lp = as_plan(limits)
        slots, amounts = lp.slots(t), lp.amounts(tokens, cost)
        stored = [self._get(s.key, t) for s in slots]
        refused = first_refusal(slots, stored, amounts)
        if refused is None:
            values, expires = self._values, self._expires
            for s, amount in zip(slots, amounts, strict=True):
                values[s.key] = values.get(s.key, 0) + amount
                expires[s.key] = t + s.ttl
        return decide(lp, slots, stored, amounts, refused, t)

    def _adjust(self, deltas: list[tuple[str, int]]) -> None:
        for key, delta in deltas:
            # An expired counter stays gone: its window is over, late usage no longer matters.
            if key in self._values:
                self._values[key] = max(0, self._values[key] + delta)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        if reservation.open_for_settle():
            self._adjust(reservation.adjustments(tokens=tokens, cost=cost))
            reservation.settled = True

    async def release(self, reservation: Reservation) -> None:
        if reservation.open_for_release():
            self._adjust(reservation.adjustments(tokens=0, cost=0.0))
            reservation.released = True

    async def usage(self, limits: Sequence[Limit], now: float | None = None) -> list[LimitUsage]:
        t = time.time() if now is None else now
        slots = [plan(limit, now=t) for limit in limits]
        return [usage_of(limit, s, self._get(s.key, t)) for limit, s in zip(limits, slots, strict=True)]

    async def aclose(self) -> None:
        self._values.clear()
        self._expires.clear()


_ERRORS: dict[LimitKind, type[errors.RateLimited]] = {
    LimitKind.RPM: errors.RateLimited,
    LimitKind.TPM: errors.RateLimited,
    LimitKind.DAILY_REQUESTS: errors.QuotaExceeded,
    LimitKind.BUDGET: errors.BudgetExceeded,
}
_SCOPE_NAMES = {"ip": "IP address", "key": "API key", "user": "user"}


def _message(limit: Limit, decision: Decision, retry: int) -> str:
    # Name the kind of scope only: the message must not echo key ids or other clients' data.
    who = _SCOPE_NAMES.get(limit.scope.split(":", 1)[0], "client")
    if decision.degraded:
        return f"Usage limits cannot be checked right now; retry after {retry}s."
    if limit.kind is LimitKind.RPM:
        return f"Rate limit reached for this {who}: {_cap(limit)} requests per minute. Retry after {retry}s."
    if limit.kind is LimitKind.TPM:
        return f"Rate limit reached for this {who}: {_cap(limit)} tokens per minute. Retry after {retry}s."
    if limit.kind is LimitKind.DAILY_REQUESTS:
        return f"Daily request quota of {_cap(limit)} reached for this {who}; it resets at 00:00 UTC."
    return f"The {limit.period} budget of ${limit.limit:.2f} for this {who} is used up."


def raise_for(decision: Decision) -> None:
    """Raise the client-facing 429 for a refused Decision (no-op when allowed)."""
    if decision.allowed or decision.denied is None:
        return
    limit = decision.denied
    retry = math.ceil(decision.retry_after)
    headers = {"Retry-After": str(retry), **decision.headers}
    raise _ERRORS[limit.kind](_message(limit, decision, retry), headers=headers)


def __getattr__(name: str) -> object:
    # RedisCounters lives in limits_redis (which imports this module); resolving it lazily avoids an
    # import cycle whichever of the two modules is imported first.
    if name == "RedisCounters":
        from portway.gateway.limits_redis import RedisCounters

        return RedisCounters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
