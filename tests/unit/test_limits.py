"""Admission limits on the in-process (memory) backend."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest

from portway import errors
from portway.gateway.limits import (
    TOTAL_BUDGET_RETRY_AFTER,
    Held,
    Limit,
    LimitKind,
    LimitPlan,
    MemoryCounters,
    Reservation,
    degraded_decision,
    format_reset,
    plan,
    raise_for,
)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


NOON = ts(2024, 3, 10, 12, 0, 30)  # 30 s into a minute window


def rpm(scope: str, n: float) -> Limit:
    return Limit(scope, LimitKind.RPM, n)


def tpm(scope: str, n: float) -> Limit:
    return Limit(scope, LimitKind.TPM, n)


def budget(scope: str, usd: float, period: str) -> Limit:
    return Limit(scope, LimitKind.BUDGET, usd, period)


@pytest.fixture
async def counters() -> MemoryCounters:
    return MemoryCounters()


async def used(c: MemoryCounters, limit: Limit, now: float = NOON) -> float:
    [u] = await c.usage([limit], now=now)
    return u.used


async def test_200_concurrent_admits_against_rpm_50_let_exactly_50_through(counters: MemoryCounters) -> None:
    limits = [rpm("ip:1.2.3.4", 50)]
    decisions = await asyncio.gather(
        *(counters.admit(limits, tokens=10, cost=0.0, now=NOON) for _ in range(200))
    )
    assert sum(d.allowed for d in decisions) == 50
    assert await used(counters, limits[0]) == 50


async def test_multiple_limits_are_all_or_nothing(counters: MemoryCounters) -> None:
    ip, key, user = rpm("ip:1.2.3.4", 10), rpm("key:k1", 1), tpm("user:u1", 1000)
    first = await counters.admit([ip, key, user], tokens=100, cost=0.0, now=NOON)
    second = await counters.admit([ip, key, user], tokens=100, cost=0.0, now=NOON)
    assert first.allowed
    assert not second.allowed
    assert second.denied == key
    assert second.reservation.held == []
    # The refusal by the key limit took nothing from the IP or user limits.
    assert await used(counters, ip) == 1
    assert await used(counters, user) == 100


async def test_first_refusal_is_reported_in_limit_order(counters: MemoryCounters) -> None:
    a, b = rpm("ip:a", 0), Limit("user:b", LimitKind.DAILY_REQUESTS, 0)
    assert (await counters.admit([a, b], tokens=0, cost=0.0, now=NOON)).denied == a
    assert (await counters.admit([b, a], tokens=0, cost=0.0, now=NOON)).denied == b


async def test_tpm_reserve_then_settle_with_more_and_less(counters: MemoryCounters) -> None:
    limit = tpm("key:k1", 1000)
    d = await counters.admit([limit], tokens=300, cost=0.0, now=NOON)
    assert await used(counters, limit) == 300
    await counters.settle(d.reservation, tokens=450, cost=0.0)
    assert await used(counters, limit) == 450
    # A second settle corrects by the difference from the last one, not from the estimate.
    await counters.settle(d.reservation, tokens=120, cost=0.0)
    assert await used(counters, limit) == 120
    # Room freed by settling less is admittable again.
    assert (await counters.admit([limit], tokens=880, cost=0.0, now=NOON)).allowed
    assert not (await counters.admit([limit], tokens=1, cost=0.0, now=NOON)).allowed


async def test_a_zero_estimate_can_still_be_settled_to_real_usage(counters: MemoryCounters) -> None:
    limits = [tpm("key:k1", 1000), budget("user:u1", 1.0, "daily")]
    d = await counters.admit(limits, tokens=0, cost=0.0, now=NOON)
    await counters.settle(d.reservation, tokens=500, cost=0.25)
    assert [await used(counters, lim) for lim in limits] == [500, 0.25]


async def test_settle_never_goes_below_zero(counters: MemoryCounters) -> None:
    limit = tpm("key:k1", 1000)
    d = await counters.admit([limit], tokens=10, cost=0.0, now=NOON)
    key = d.reservation.held[0].key
    await counters.settle(Reservation([Held(key, LimitKind.TPM, 10_000)]), tokens=0, cost=0.0)
    assert await used(counters, limit) == 0


async def test_tpm_request_needing_more_than_left_is_refused(counters: MemoryCounters) -> None:
    limit = tpm("key:k1", 1000)
    assert (await counters.admit([limit], tokens=900, cost=0.0, now=NOON)).allowed
    d = await counters.admit([limit], tokens=200, cost=0.0, now=NOON)
    assert not d.allowed
    assert d.retry_after == pytest.approx(30)
    assert (await counters.admit([limit], tokens=200, cost=0.0, now=NOON + 30)).allowed  # next window


async def test_release_gives_back_tokens_and_cost_but_keeps_the_request(counters: MemoryCounters) -> None:
    limits = [rpm("key:k1", 10), tpm("key:k1", 1000), budget("user:u1", 5.0, "total")]
    d = await counters.admit(limits, tokens=400, cost=1.25, now=NOON)
    assert [await used(counters, lim) for lim in limits] == [1, 400, 1.25]
    await counters.release(d.reservation)
    assert [await used(counters, lim) for lim in limits] == [1, 0, 0]
    await counters.release(d.reservation)  # idempotent
    assert [await used(counters, lim) for lim in limits] == [1, 0, 0]


async def test_release_after_settle_keeps_real_usage(counters: MemoryCounters) -> None:
    limit = budget("user:u1", 5.0, "total")
    d = await counters.admit([limit], tokens=0, cost=1.0, now=NOON)
    await counters.settle(d.reservation, tokens=0, cost=0.4)
    await counters.release(d.reservation)
    assert await used(counters, limit) == pytest.approx(0.4)


async def test_daily_quota_resets_at_next_utc_midnight(counters: MemoryCounters) -> None:
    limit = Limit("key:k1", LimitKind.DAILY_REQUESTS, 2)
    late = ts(2024, 3, 10, 23, 59, 30)
    assert (await counters.admit([limit], tokens=0, cost=0.0, now=ts(2024, 3, 10, 0, 0, 0))).allowed
    assert (await counters.admit([limit], tokens=0, cost=0.0, now=late)).allowed
    refused = await counters.admit([limit], tokens=0, cost=0.0, now=late)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(30)
    assert (await counters.admit([limit], tokens=0, cost=0.0, now=ts(2024, 3, 11, 0, 0, 0))).allowed
    [u] = await counters.usage([limit], now=ts(2024, 3, 11, 8, 0, 0))
    assert (u.used, u.remaining, u.reset_at) == (1, 1, ts(2024, 3, 12))


@pytest.mark.parametrize(
    ("period", "spent_at", "still_spent_at", "reset_at"),
    [
        ("daily", ts(2024, 3, 10, 9), ts(2024, 3, 10, 23, 59), ts(2024, 3, 11)),
        ("monthly", ts(2024, 12, 1, 0), ts(2024, 12, 31, 23), ts(2025, 1, 1)),
        ("total", ts(2020, 1, 1), ts(2020, 12, 31), None),  # idle < the 400-day TTL
    ],
)
async def test_budget_periods(
    counters: MemoryCounters, period: str, spent_at: float, still_spent_at: float, reset_at: float | None
) -> None:
    limit = budget("user:u1", 1.0, period)
    assert (await counters.admit([limit], tokens=0, cost=1.0, now=spent_at)).allowed
    refused = await counters.admit([limit], tokens=0, cost=0.01, now=still_spent_at)
    assert not refused.allowed
    if reset_at is None:
        assert refused.retry_after == TOTAL_BUDGET_RETRY_AFTER
        return
    assert refused.retry_after == pytest.approx(reset_at - still_spent_at)
    assert (await counters.admit([limit], tokens=0, cost=1.0, now=reset_at)).allowed


async def test_budget_overshoot_is_bounded_by_in_flight_reservations(counters: MemoryCounters) -> None:
    limit = budget("user:u1", 1.0, "daily")
    first = await asyncio.gather(*(counters.admit([limit], tokens=0, cost=0.30, now=NOON) for _ in range(10)))
    admitted = [d for d in first if d.allowed]
    assert len(admitted) == 3
    for d in admitted:
        await counters.settle(d.reservation, tokens=0, cost=0.10)
    assert await used(counters, limit) == pytest.approx(0.30)
    second = await asyncio.gather(
        *(counters.admit([limit], tokens=0, cost=0.30, now=NOON) for _ in range(10))
    )
    assert sum(d.allowed for d in second) == 2  # 0.30 settled + 2 x 0.30 reserved = 0.90 <= 1.00


async def test_money_is_counted_in_micro_usd_without_float_drift(counters: MemoryCounters) -> None:
    limit = budget("user:u1", 1.0, "total")
    for _ in range(10):
        assert (await counters.admit([limit], tokens=0, cost=0.1, now=NOON)).allowed
    assert await used(counters, limit) == 1.0  # exactly, where summing floats gives 0.9999999999999999
    assert not (await counters.admit([limit], tokens=0, cost=0.0, now=NOON)).allowed  # exhausted


async def test_headers_come_from_the_tightest_rpm_and_tpm_limits(counters: MemoryCounters) -> None:
    limits = [rpm("ip:1.2.3.4", 100), rpm("key:k1", 10), tpm("key:k1", 5000), tpm("user:u1", 40_000)]
    d = await counters.admit(limits, tokens=1000, cost=0.0, now=NOON)
    assert d.headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "5000",
        "x-ratelimit-remaining-tokens": "4000",
        "x-ratelimit-reset-tokens": "30s",
    }


async def test_headers_on_refusal_show_current_usage(counters: MemoryCounters) -> None:
    limits = [rpm("key:k1", 1)]
    await counters.admit(limits, tokens=0, cost=0.0, now=NOON)
    d = await counters.admit(limits, tokens=0, cost=0.0, now=NOON + 20.5)
    assert not d.allowed
    assert d.headers["x-ratelimit-remaining-requests"] == "0"
    assert d.headers["x-ratelimit-reset-requests"] == "9.5s"
    assert "x-ratelimit-limit-tokens" not in d.headers


async def test_no_limits_means_allowed_without_headers(counters: MemoryCounters) -> None:
    d = await counters.admit([], tokens=100, cost=1.0)
    assert (d.allowed, d.denied, d.retry_after, d.headers) == (True, None, 0.0, {})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (1, "1s"), (9.5, "9.5s"), (360, "6m0s"), (3723.5, "1h2m3.5s"), (-3, "0s")],
)
def test_format_reset_matches_openai_style(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@pytest.mark.parametrize(
    ("limit", "error", "code"),
    [
        (rpm("key:k1", 1), errors.RateLimited, "rate_limit_exceeded"),
        (tpm("key:k1", 1), errors.RateLimited, "rate_limit_exceeded"),
        (Limit("key:k1", LimitKind.DAILY_REQUESTS, 1), errors.QuotaExceeded, "quota_exceeded"),
        (budget("key:k1", 0.000001, "monthly"), errors.BudgetExceeded, "budget_exceeded"),
    ],
)
async def test_raise_for_raises_the_right_error(
    counters: MemoryCounters, limit: Limit, error: type[errors.RateLimited], code: str
) -> None:
    ok = await counters.admit([limit], tokens=1, cost=0.000001, now=NOON)
    raise_for(ok)  # allowed: no exception
    refused = await counters.admit([limit], tokens=1, cost=0.000001, now=NOON + 0.2)
    with pytest.raises(error) as info:
        raise_for(refused)
    exc = info.value
    assert type(exc) is error
    assert (exc.status_code, exc.code, exc.to_dict()["error"]["type"]) == (429, code, "rate_limit_error")
    assert exc.headers["Retry-After"] == str(math.ceil(refused.retry_after))
    assert "k1" not in exc.message  # no key ids in client-facing text
    for name, value in refused.headers.items():
        assert exc.headers[name] == value


async def test_raise_for_rounds_retry_after_up(counters: MemoryCounters) -> None:
    limit = rpm("ip:1.2.3.4", 1)
    await counters.admit([limit], tokens=0, cost=0.0, now=NOON)
    refused = await counters.admit([limit], tokens=0, cost=0.0, now=NOON + 29.2)  # 0.8 s left
    with pytest.raises(errors.RateLimited) as info:
        raise_for(refused)
    assert info.value.headers["Retry-After"] == "1"


def test_degraded_decision_follows_each_limits_fail_policy() -> None:
    rate, cash = rpm("ip:1.2.3.4", 1), budget("user:u1", 1.0, "daily")
    assert degraded_decision([rate], 5.0).allowed
    refused = degraded_decision([rate, cash], 5.0)
    assert (refused.allowed, refused.denied, refused.retry_after, refused.degraded) == (
        False,
        cash,
        5.0,
        True,
    )
    with pytest.raises(errors.BudgetExceeded) as info:
        raise_for(refused)
    assert info.value.headers == {"Retry-After": "5"}
    assert degraded_decision([Limit("user:u1", LimitKind.BUDGET, 1.0, "daily", fail_open=True)], 1.0).allowed
    assert not degraded_decision([Limit("ip:x", LimitKind.RPM, 1, fail_open=False)], 1.0).allowed


def test_limit_validation_and_fail_defaults() -> None:
    assert rpm("ip:x", 1).fails_open
    assert Limit("ip:x", LimitKind.DAILY_REQUESTS, 1).fails_open
    assert not budget("user:u", 1, "total").fails_open
    with pytest.raises(ValueError):
        Limit("user:u", LimitKind.BUDGET, 1.0)  # a budget needs a period
    with pytest.raises(ValueError):
        rpm("ip:x", -1)
    with pytest.raises(ValueError):
        rpm("", 1)


def test_counter_keys_carry_the_window_and_the_scope_last() -> None:
    at = ts(2024, 3, 10, 12, 0, 30)
    assert plan(rpm("ip:2001:db8::1", 1), now=at).key == f"rpm:{int(at) - 30}:ip:2001:db8::1"
    assert plan(budget("user:u", 1, "daily"), now=at).key == "usd:d20240310:user:u"
    assert plan(budget("user:u", 1, "monthly"), now=at).key == "usd:m202403:user:u"
    assert plan(budget("user:u", 1, "total"), now=at).key == "usd:total:user:u"
    day = plan(Limit("key:k", LimitKind.DAILY_REQUESTS, 1), now=at)
    assert day.key == "day:20240310:key:k"
    assert day.ttl == 12 * 3600 - 30 + 3600


async def test_a_reused_limit_plan_moves_to_the_next_window_and_day(counters: MemoryCounters) -> None:
    # A LimitPlan caches its counter slots for a minute: crossing a minute or a day must still start
    # new counters, and a plan shared by many requests must count them all.
    late = ts(2024, 3, 10, 23, 59, 59)
    lp = LimitPlan(
        [rpm("key:k", 2), Limit("key:k", LimitKind.DAILY_REQUESTS, 3), budget("key:k", 1, "daily")]
    )
    assert [(await counters.admit(lp, tokens=1, cost=0.4, now=late)).allowed for _ in range(3)] == [
        True,
        True,
        False,  # rpm 2 reached (and the daily budget would have been too)
    ]
    nxt = late + 1.5  # 00:00:00.5 the next day: new minute, new day
    assert (await counters.admit(lp, tokens=1, cost=0.4, now=nxt)).allowed
    assert (await used(counters, lp.limits[1], now=nxt)) == 1
    assert (await used(counters, lp.limits[1], now=late)) == 2
    same = [rpm("key:k", 2), Limit("key:k", LimitKind.DAILY_REQUESTS, 3), budget("key:k", 1, "daily")]
    d = await counters.admit(same, tokens=1, cost=0.4, now=nxt)  # a plain list counts on the same counters
    assert d.allowed and d.headers["x-ratelimit-remaining-requests"] == "0"
    assert not (await counters.admit(lp, tokens=1, cost=0.4, now=nxt + 1)).allowed


async def test_old_windows_are_dropped_lazily(counters: MemoryCounters) -> None:
    limits = [rpm("ip:1.2.3.4", 5), tpm("ip:1.2.3.4", 100)]
    for minute in range(10):
        await counters.admit(limits, tokens=1, cost=0.0, now=NOON + 60 * minute)
    assert len(counters._values) <= 6  # only windows younger than their 120 s TTL survive a sweep


def test_breaker_opens_after_threshold_and_lets_one_probe_through_after_cooldown() -> None:
    from portway.gateway.limits_redis import _Breaker

    b = _Breaker(threshold=2, cooldown=0.0)
    assert b.allow()
    b.failed(probe=False)
    assert b.allow() and not b.is_open
    b.failed(probe=False)
    assert b.is_open
    assert b.allow()  # cooldown over: this caller probes...
    assert not b.allow()  # ...and everyone else keeps deciding without Redis meanwhile
    b.failed(probe=True)  # failed probe: open again
    assert b.is_open and b.allow()
    b.abandoned(probe=True)  # a cancelled probe frees the slot for the next caller
    assert b.allow()
    b.succeeded()
    assert not b.is_open and b.allow()
