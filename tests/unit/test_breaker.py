"""The one circuit breaker, as the key pool and the Redis counters use it."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from portway.limits.redis import RedisCounters
from portway.routing.breaker import Breaker


def allow(b: Breaker, now: float) -> bool:
    """What RedisCounters does per call: go ahead if available, and become the probe if half-open."""
    if not b.available(now):
        return False
    b.on_acquire(now)
    return True


def test_breaker_opens_after_threshold_and_lets_one_probe_through_after_cooldown() -> None:
    # Moved from test_limits (it tested the Redis counters' own breaker, now this one).
    b = Breaker(threshold=2, cooldown=0.0)
    assert allow(b, 0)
    b.failure(0, probe=False)
    assert allow(b, 0) and not b.tripped
    b.failure(0, probe=False)
    assert b.tripped
    assert allow(b, 0)  # cooldown over: this caller probes...
    assert not allow(b, 0)  # ...and everyone else keeps deciding without Redis meanwhile
    b.failure(0, probe=True)  # failed probe: open again
    assert b.tripped and allow(b, 0)
    b.abandon(probe=True)  # a cancelled probe frees the slot for the next caller
    assert allow(b, 0)
    b.success()
    assert not b.tripped and allow(b, 0)


def test_states_through_a_cooldown_and_one_probe() -> None:
    b = Breaker(threshold=3, cooldown=10)
    for t in (0, 1):
        b.failure(t)
        assert b.state(t) == "closed"
    b.failure(2)
    assert b.state(2) == "open" and not b.available(11.9)
    assert b.state(12) == "half_open"
    assert b.on_acquire(12) is True  # the probe
    assert b.state(12) == "open" and b.on_acquire(12) is False
    b.failure(13)  # the probe failed: another whole cool-down from now
    assert b.state(22.9) == "open" and b.state(23) == "half_open"
    b.on_acquire(23)
    b.success()
    assert b.state(23) == "closed" and b.failures == 0


def test_a_failure_while_open_restarts_the_cooldown() -> None:
    b = Breaker(threshold=1, cooldown=10)
    b.failure(0)
    b.failure(5, probe=False)  # a call begun before it opened fails late
    assert b.state(10) == "open" and b.state(15) == "half_open"


def test_only_the_probe_ends_the_probe_when_the_caller_keeps_track() -> None:
    b = Breaker(threshold=1, cooldown=1)
    b.failure(0)
    probe = b.on_acquire(1)
    assert probe
    b.abandon(probe=False)  # another call, begun before the breaker opened, was cancelled
    assert not b.available(1)  # still one probe in flight
    b.abandon(probe=probe)
    assert b.available(1)


def test_a_caller_that_does_not_keep_track_ends_the_probe_with_any_verdict() -> None:
    # The key pool reports verdicts per key, not per attempt: any of them settles the probe.
    b = Breaker(threshold=1, cooldown=1)
    b.failure(0)
    b.on_acquire(1)
    b.abandon()
    assert b.state(1) == "half_open"


@pytest.mark.parametrize("threshold", [0, 1])
def test_a_threshold_below_one_opens_on_the_first_failure(threshold: int) -> None:
    b = Breaker(threshold=threshold, cooldown=1)
    assert b.state(0) == "closed"
    b.failure(0)
    assert b.state(0) == "open"


async def test_redis_counters_stop_calling_redis_while_the_breaker_is_open() -> None:
    c = RedisCounters("redis://127.0.0.1:1/0", breaker_threshold=2, breaker_cooldown=60)
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("down")

    try:
        assert await c._call(failing) is None
        assert not c.breaker_open
        assert await c._call(failing) is None
        assert c.breaker_open and calls == 2
        assert await c._call(failing) is None
        assert calls == 2  # open: decided without Redis, not tried
    finally:
        await c.aclose()
