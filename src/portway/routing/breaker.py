"""The one circuit breaker: per (provider, key) in the key pool, and around Redis in the limit counters.

It opens after `threshold` consecutive failures. After `cooldown` seconds it is half-open: the next caller
to acquire it is the single probe, and everyone else sees it open until the probe reports. A success closes
it; a failure while it is open (the probe's, or a late one of a call begun before it opened) opens it for
another cool-down; an abandoned probe (cancelled, no verdict) lets the next caller probe.

Callers pass their own clock (`now`, monotonic seconds), so tests drive it without sleeping.
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]


class Breaker:
    __slots__ = ("cooldown", "failures", "opened_at", "probing", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.failures = 0  # consecutive
        self.opened_at: float | None = None  # set while open or half-open
        self.probing = False  # a half-open probe is in flight

    @property
    def tripped(self) -> bool:
        """Open or half-open: not closed until a success."""
        return self.opened_at is not None

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.cooldown and not self.probing:
            return "half_open"
        return "open"

    def available(self, now: float) -> bool:
        return self.state(now) != "open"

    def on_acquire(self, now: float) -> bool:
        """A caller takes it (after `available`); True when that caller is the half-open probe."""
        if self.state(now) == "half_open":
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self, now: float, *, probe: bool = True) -> None:
        """`probe`: whether this caller was the probe (`on_acquire`'s answer). A caller that does not keep
        track leaves the default, and then any verdict ends a probe in flight."""
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = now
        if probe:
            self.probing = False

    def abandon(self, *, probe: bool = True) -> None:
        """The attempt ended without a verdict (cancelled): let another caller probe."""
        if probe:
            self.probing = False
