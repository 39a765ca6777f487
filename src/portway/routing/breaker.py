"""A circuit breaker per (provider, key): opens after consecutive failures; one half-open probe
after a cool-down decides whether it closes again."""

from __future__ import annotations


class Breaker:
    __slots__ = ("cooldown", "failures", "opened_at", "probing", "threshold")

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.cooldown and not self.probing:
            return "half_open"
        return "open"

    def available(self, now: float) -> bool:
        return self.state(now) != "open"

    def on_acquire(self, now: float) -> None:
        # In half-open, the caller that acquires is the single probe; others see "open" until it reports.
        if self.opened_at is not None and self.state(now) == "half_open":
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = now
        self.probing = False

    def abandon(self) -> None:
        """The attempt ended without a verdict (cancelled): let another caller probe."""
        self.probing = False
