"""Limit counters in one process's memory (exact for one worker; Redis shares them between replicas)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from portway.limits.counters import (
    WINDOW_SECONDS,
    Counters,
    Decision,
    LimitPlan,
    LimitUsage,
    Reservation,
    Slot,
    as_plan,
    decide,
    first_refusal,
    plan,
    usage_of,
)
from portway.limits.spec import Limit


class _Counter:
    """One counter's value and expiry, kept together so that admission looks each counter up only once."""

    __slots__ = ("expires", "value")

    def __init__(self, value: int, expires: float) -> None:
        self.value = value
        self.expires = expires


class MemoryCounters(Counters):
    """Counters in one process's memory.

    ``admit`` has no await between reading and writing the counters, so on one event loop it is atomic
    without a lock. Expired counters read as absent and are dropped lazily, all of them at most once a minute.
    """

    def __init__(self) -> None:
        self._counters: dict[str, _Counter] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + WINDOW_SECONDS
        for key in [k for k, c in self._counters.items() if c.expires <= now]:
            del self._counters[key]

    def _read(self, slots: Sequence[Slot], now: float) -> tuple[list[_Counter | None], list[int]]:
        """The slots' live counters (None when absent or expired) and their values."""
        counters = self._counters
        found: list[_Counter | None] = []
        stored: list[int] = []
        for slot in slots:
            counter = counters.get(slot.key)
            if counter is not None and counter.expires <= now:
                del counters[slot.key]
                counter = None
            found.append(counter)
            stored.append(0 if counter is None else counter.value)
        return found, stored

    async def admit(
        self, limits: Sequence[Limit] | LimitPlan, *, tokens: int, cost: float, now: float | None = None
    ) -> Decision:
        t = time.time() if now is None else now
        if t >= self._next_sweep:
            self._sweep(t)
        lp = as_plan(limits)
        slots, amounts = lp.slots(t), lp.amounts(tokens, cost)
        found, stored = self._read(slots, t)
        refused = first_refusal(lp, slots, stored, amounts)
        if refused is None:
            # Equal lengths (all from ``lp``), so no strict=True: it costs per item on this hot path.
            for slot, counter, amount in zip(slots, found, amounts, strict=False):
                if counter is None:
                    # A new counter; an earlier slot sharing its key may have just created it.
                    counter = self._counters.setdefault(slot.key, _Counter(0, 0.0))
                counter.value += amount
                counter.expires = t + slot.ttl
        return decide(lp, slots, stored, amounts, refused, t)

    def _adjust(self, deltas: list[tuple[str, int]]) -> None:
        counters = self._counters
        for key, delta in deltas:
            # An expired counter stays gone: its window is over, late usage no longer matters.
            counter = counters.get(key)
            if counter is not None:
                value = counter.value + delta
                counter.value = value if value > 0 else 0

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
        _, stored = self._read(slots, t)
        return [usage_of(limit, s, v) for limit, s, v in zip(limits, slots, stored, strict=True)]

    async def aclose(self) -> None:
        self._counters.clear()
