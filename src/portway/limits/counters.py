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
  **closed** (an outage must not let spend run away). See ``limits.redis`` for the circuit breaker.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from portway import errors
from portway.limits.spec import MICRO_USD, Limit, LimitKind, to_micro

WINDOW_SECONDS = 60
# A total budget never resets; this only keeps well-behaved clients from retrying in a tight loop.
TOTAL_BUDGET_RETRY_AFTER = 3600.0

_MINUTE_TTL = 2 * WINDOW_SECONDS
_DAY = 86_400
_TOTAL_TTL = 400 * _DAY

# Reading an enum member off its class costs ~0.1 us on Python 3.11; the hot paths use these instead.
_TPM = LimitKind.TPM
_BUDGET = LimitKind.BUDGET


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
        tokens, micro = int(tokens), to_micro(cost)
        if tokens < 0:
            tokens = 0
        deltas: list[tuple[str, int]] = []
        for h in self.held:
            kind = h.kind
            if kind is _TPM:
                delta, h.amount = tokens - h.amount, tokens
            elif kind is _BUDGET:
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

    async def start(self) -> None:
        """Connect before the first request (a shared store); returns within a bounded time."""
        return None

    def status(self) -> str | None:
        """For readiness: None (nothing to report: in-process counters), "ok", "connecting" (never reached
        yet: not ready) or "unreachable" (an outage after start: limits follow their fail-open policy)."""
        return None

    async def aclose(self) -> None: ...


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


class _HeaderGroup(NamedTuple):
    """The x-ratelimit-* headers of one kind (RPM or TPM) and the slots of that kind."""

    limit_name: str
    remaining_name: str
    reset_name: str
    first: int  # the first slot of the kind
    others: tuple[int, ...]  # the other slots of the kind


_HEADER_NOUNS = ((LimitKind.RPM, "requests"), (LimitKind.TPM, "tokens"))


class LimitPlan:
    """A set of limits prepared for admission, built once per caller rather than per request.

    Which counters the limits use changes at most once a minute (day and month boundaries are minute
    boundaries too), so the slots are worked out once per minute; per request only the amounts are new.
    Counter TTLs are counted from the start of the minute, so a counter may outlive its period by up to
    a minute more than ``plan`` says: they only bound how long an idle counter takes memory.

    What never changes with time is worked out once, here: each slot's cap (and its header text), which
    slots take tokens or cost, and whether two limits share a counter (almost never; only then does
    admission need to track what earlier slots take from a key).
    """

    __slots__ = (
        "_minute",
        "_slots",
        "cap_texts",
        "caps",
        "header_groups",
        "held_slots",
        "kinds",
        "limits",
        "shared",
        "zeros",
    )

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = tuple(limits)
        self.kinds = tuple(limit.kind for limit in self.limits)
        # The same ``_cap`` that ``plan`` puts in every slot: slot caps never change with time.
        self.caps = tuple(_cap(limit) for limit in self.limits)
        self.cap_texts = tuple(str(cap) for cap in self.caps)
        # Only tokens and cost are settled later, so only their slots go into a Reservation.
        self.held_slots = tuple(i for i, kind in enumerate(self.kinds) if kind is _TPM or kind is _BUDGET)
        # Two limits share a counter exactly when kind, scope and (budgets) period match: the time part of
        # their keys is then equal too. So the keys of any one moment tell whether that ever happens.
        self.shared = len({plan(limit, now=0.0).key for limit in self.limits}) < len(self.limits)
        self.zeros = (0,) * len(self.limits)
        # x-ratelimit-* describe the tightest RPM slot and the tightest TPM slot.
        self.header_groups = tuple(
            _HeaderGroup(
                f"x-ratelimit-limit-{noun}",
                f"x-ratelimit-remaining-{noun}",
                f"x-ratelimit-reset-{noun}",
                found[0],
                found[1:],
            )
            for kind, noun in _HEADER_NOUNS
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

    def amounts(self, tokens: int, cost: float) -> tuple[int, ...]:
        """What one admission takes from each slot: 1 request, the estimated tokens or micro-USD."""
        tokens = int(tokens)
        if tokens < 0:
            tokens = 0
        micro = to_micro(cost)
        return tuple([tokens if kind is _TPM else micro if kind is _BUDGET else 1 for kind in self.kinds])


def as_plan(limits: Sequence[Limit] | LimitPlan) -> LimitPlan:
    return limits if isinstance(limits, LimitPlan) else LimitPlan(limits)


def _taken_per_slot(slots: Sequence[Slot], amounts: Sequence[int]) -> list[int]:
    """What admission took from each slot's counter up to that slot, for slots that share keys."""
    pending: dict[str, int] = {}
    taken: list[int] = []
    for slot, amount in zip(slots, amounts, strict=True):
        pending[slot.key] = total = pending.get(slot.key, 0) + amount
        taken.append(total)
    return taken


def first_refusal(
    limits: LimitPlan, slots: Sequence[Slot], stored: Sequence[int], amounts: Sequence[int]
) -> int | None:
    """Index of the first slot without room for its amount, or None if all fit.

    ``used >= cap`` refuses even a zero-amount request on an exhausted counter (a request estimated at 0
    tokens still spends tokens). Slots sharing a key see what earlier ones would take. The Redis Lua
    script mirrors this function exactly. ``slots`` come from ``limits.slots``.
    """
    # Without shared keys (the common case) a slot's counter takes only its own amount.
    taken = _taken_per_slot(slots, amounts) if limits.shared else amounts
    caps = limits.caps
    for i, base in enumerate(stored):
        after = base + taken[i]
        if after - amounts[i] >= caps[i] or after > caps[i]:
            return i
    return None


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: "20ms", "1s", "6m0s", "1h2m3.5s"."""
    ms = round(seconds * 1000) if seconds > 0 else 0  # ``> 0`` is False for NaN too
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    # Seconds with up to three decimals, trailing zeros dropped ("9.5s", "0.25s", "6s"): under 60 with
    # three decimals is at most five significant digits, which "g" (six) writes exactly.
    if ms < 60_000:  # the usual case: a rate window resets within the minute
        return f"{ms / 1000:g}s"
    minutes, ms = divmod(ms, 60_000)
    if minutes < 60:
        return f"{minutes}m{ms / 1000:g}s"
    return f"{minutes // 60}h{minutes % 60}m{ms / 1000:g}s"


def _rate_headers(
    lp: LimitPlan, slots: Sequence[Slot], stored: Sequence[int], taken: Sequence[int], now: float
) -> dict[str, str]:
    """x-ratelimit-* of the tightest RPM and TPM slots, each having ``stored[i] + taken[i]`` used."""
    headers: dict[str, str] = {}
    caps = lp.caps
    text: str | None = None
    text_at: float | None = None  # RPM and TPM share their window: format its reset once
    for limit_h, remaining_h, reset_h, best, others in lp.header_groups:
        remaining = caps[best] - stored[best] - taken[best]
        if remaining < 0:
            remaining = 0
        for i in others:
            # Tightest = least remaining; on a tie the smaller limit is the more informative one.
            left = caps[i] - stored[i] - taken[i]
            if left < 0:
                left = 0
            if left < remaining or (left == remaining and caps[i] < caps[best]):
                best, remaining = i, left
        headers[limit_h] = lp.cap_texts[best]
        headers[remaining_h] = str(remaining)
        reset_at = slots[best].reset_at
        if text is None or reset_at != text_at:
            text, text_at = format_reset((reset_at or now) - now), reset_at
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

    ``slots`` come from ``limits.slots``. ``refused`` is the index the backend's atomic step refused at;
    when None the slots were taken.
    """
    if refused is not None:
        slot = slots[refused]
        retry = TOTAL_BUDGET_RETRY_AFTER if slot.reset_at is None else max(0.0, slot.reset_at - now)
        headers = _rate_headers(limits, slots, stored, limits.zeros, now)
        return Decision(False, limits.limits[refused], retry, headers, Reservation())
    # Zero estimates are held too, so that settling real usage still finds (and adds to) their counters.
    # (A plain loop: a list comprehension costs more than the two or three items it usually builds.)
    kinds = limits.kinds
    held: list[Held] = []
    for i in limits.held_slots:
        held.append(Held(slots[i].key, kinds[i], amounts[i]))
    taken = _taken_per_slot(slots, amounts) if limits.shared else amounts
    return Decision(True, None, 0.0, _rate_headers(limits, slots, stored, taken, now), Reservation(held))


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
