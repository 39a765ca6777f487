"""A provider's pool of upstream API keys: least-in-flight choice, 429 cool-downs, bad keys removed.

Keys are never logged or shown: each has a label (`groq#1`) for attempt lists, metrics and health output.
A keyless provider (the local model) has one pool entry with key None, so it gets a breaker too.
"""

from __future__ import annotations

from portway.gateway.breaker import Breaker
from portway.providers.base import FailureKind

_BREAKER_FAILURES = frozenset(
    {FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.BAD_RESPONSE}
)


class KeyState:
    __slots__ = ("breaker", "cooldown_until", "disabled", "in_flight", "key", "label")

    def __init__(self, key: str | None, label: str, breaker: Breaker) -> None:
        self.key = key
        self.label = label
        self.breaker = breaker
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.disabled = False

    def usable(self, now: float) -> bool:
        return not self.disabled and now >= self.cooldown_until and self.breaker.available(now)


class KeyPool:
    def __init__(
        self,
        provider: str,
        keys: list[str | None],
        *,
        breaker_threshold: int,
        breaker_cooldown: float,
        max_cooldown: float = 300.0,
    ) -> None:
        self.provider = provider
        self.max_cooldown = max_cooldown
        self.states = [
            KeyState(k, f"{provider}#{i + 1}", Breaker(breaker_threshold, breaker_cooldown))
            for i, k in enumerate(keys)
        ]
        self._turn = 0

    def acquire(self, now: float) -> KeyState | None:
        """The usable key with the fewest requests in flight (round-robin among equals), or None."""
        best: KeyState | None = None
        n = len(self.states)
        for i in range(n):
            state = self.states[(self._turn + i) % n]
            if state.usable(now) and (best is None or state.in_flight < best.in_flight):
                best = state
        if best is None:
            return None
        self._turn = (self._turn + 1) % n
        best.in_flight += 1
        best.breaker.on_acquire(now)
        return best

    def report(
        self, state: KeyState, failure: FailureKind | None, now: float, retry_after: float | None
    ) -> None:
        """Record an attempt's verdict (None = success) against its key."""
        if failure is None or failure is FailureKind.BAD_REQUEST:
            state.breaker.success()  # a 400 proves the upstream and key work
        elif failure is FailureKind.AUTH:
            state.disabled = True
            state.breaker.abandon()
        elif failure is FailureKind.RATE_LIMIT:
            state.cooldown_until = now + min(retry_after or 0.0, self.max_cooldown)
            state.breaker.abandon()
        elif failure in _BREAKER_FAILURES:
            state.breaker.failure(now)

    def release(self, state: KeyState) -> None:
        state.in_flight -= 1

    def next_available_in(self, now: float) -> float | None:
        """Seconds until some key is usable again (for Retry-After), None if every key is disabled."""
        waits = [
            max(s.cooldown_until - now, _breaker_wait(s.breaker, now), 0.0)
            for s in self.states
            if not s.disabled
        ]
        return min(waits) if waits else None


def _breaker_wait(breaker: Breaker, now: float) -> float:
    return 0.0 if breaker.opened_at is None else breaker.opened_at + breaker.cooldown - now
