"""A provider's pool of upstream API keys: least-in-flight choice, 429 cool-downs, rejected keys set aside.

Keys are never logged or shown: each has a label (`groq#1`) for attempt lists, metrics and health output.
A keyless provider (the local model) has one pool entry with key None, so it gets a breaker too.

A key the upstream rejects (401) leaves the pool, but not for the life of the process: after
`recheck_after` seconds one request may use it again (half-open, like a breaker probe), and any answer other
than another 401 brings it back. A 403 is about one model, not the key: it never touches the pool.
"""

from __future__ import annotations

from portway.providers.base import FailureKind
from portway.routing.breaker import Breaker

_BREAKER_FAILURES = frozenset(
    {FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.BAD_RESPONSE}
)
# The upstream answered and accepted the key: as good as a success for the breaker.
_ANSWERED = frozenset({FailureKind.BAD_REQUEST, FailureKind.FORBIDDEN})


class KeyState:
    __slots__ = (
        "breaker",
        "cooldown_until",
        "disabled",
        "in_flight",
        "key",
        "label",
        "recheck_at",
        "rechecking",
    )

    def __init__(self, key: str | None, label: str, breaker: Breaker) -> None:
        self.key = key
        self.label = label
        self.breaker = breaker
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.disabled = False  # rejected (401): out of the pool until recheck_at
        self.recheck_at = 0.0
        self.rechecking = False  # one request is re-probing the rejected key

    def usable(self, now: float) -> bool:
        if self.disabled and (self.rechecking or now < self.recheck_at):
            return False
        return now >= self.cooldown_until and self.breaker.available(now)


class KeyPool:
    def __init__(
        self,
        provider: str,
        keys: list[str | None],
        *,
        breaker_threshold: int,
        breaker_cooldown: float,
        max_cooldown: float = 300.0,
        recheck_after: float = 300.0,
    ) -> None:
        self.provider = provider
        self.max_cooldown = max_cooldown
        self.recheck_after = recheck_after
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
        if best.disabled:
            best.rechecking = True  # this request is the re-probe; others keep away until it reports
        return best

    def has_usable(self, now: float) -> bool:
        """Whether acquire() would find a key now (without taking it)."""
        return any(s.usable(now) for s in self.states)

    def report(
        self, state: KeyState, failure: FailureKind | None, now: float, retry_after: float | None
    ) -> None:
        """Record an attempt's verdict (None = success) against its key.

        `retry_after`: a 429's cool-down, or for a 401 how long until the key is re-probed.
        """
        if failure is FailureKind.AUTH:
            state.disabled = True
            state.rechecking = False
            state.recheck_at = now + (self.recheck_after if retry_after is None else retry_after)
            state.breaker.abandon()
            return
        if state.disabled:  # a re-probe that got past authentication: the key is back
            state.disabled = state.rechecking = False
        if failure is None or failure in _ANSWERED:
            state.breaker.success()
        elif failure is FailureKind.RATE_LIMIT:
            state.cooldown_until = now + min(retry_after or 0.0, self.max_cooldown)
            state.breaker.abandon()
        elif failure in _BREAKER_FAILURES:
            state.breaker.failure(now)

    def abandon(self, state: KeyState) -> None:
        """The attempt ended without a verdict on the key (cancelled, or the request's deadline ran out)."""
        state.breaker.abandon()
        state.rechecking = False

    def release(self, state: KeyState) -> None:
        state.in_flight -= 1

    def next_available_in(self, now: float) -> float | None:
        """Seconds until some key is usable again (for Retry-After); None if there is no key at all."""
        waits = [
            max(s.recheck_at - now, 0.0)
            if s.disabled
            else max(s.cooldown_until - now, _breaker_wait(s.breaker, now), 0.0)
            for s in self.states
        ]
        return min(waits) if waits else None


def _breaker_wait(breaker: Breaker, now: float) -> float:
    return 0.0 if breaker.opened_at is None else breaker.opened_at + breaker.cooldown - now
