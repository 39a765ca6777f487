"""Admission limits on the in-process (memory) backend."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime

import pytest

from portway import errors
from portway.config import LimitsConfig
from portway.identity.auth import Principal
from portway.limits.admission import Admission
from portway.limits.counters import (
    TOTAL_BUDGET_RETRY_AFTER,
    Held,
    LimitPlan,
    Reservation,
    degraded_decision,
    first_refusal,
    format_reset,
    plan,
    raise_for,
)
from portway.limits.memory import MemoryCounters
from portway.limits.spec import Limit, LimitKind, LimitSpec
from portway.usage.cost import Pricing


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
    assert len(counters._counters) <= 6  # only windows younger than their 120 s TTL survive a sweep


# --- The fast paths (precomputed plan facts, unique-key checks, header building) behave as before. ---


def _reference_format_reset(seconds: float) -> str:
    """format_reset as first written (plain float formatting); the one in use must match it byte for byte."""
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


def test_format_reset_matches_the_reference_for_every_millisecond_of_a_window_and_beyond() -> None:
    millis = [*range(0, 61_000), *range(61_000, 8 * 3_600_000, 9_973)]
    for ms in millis:
        for seconds in (ms / 1000, ms / 1000 + 0.0004, ms / 1000 - 0.0004, ms / 1000 + 0.0005):
            assert format_reset(seconds) == _reference_format_reset(seconds), seconds
    for seconds in (float("nan"), -0.0, float("-inf"), 1e-9, 0.0025, 59.9995, 3600.0, 86_400.5):
        assert format_reset(seconds) == _reference_format_reset(seconds), seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(59.9994, "59.999s"), (59.9996, "1m0s"), (60.001, "1m0.001s"), (7200, "2h0m0s"), (0.0004, "0s")],
)
def test_format_reset_edges(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@pytest.mark.parametrize("n", [0, 1, 2, 5])  # no slot, one, a few
def test_amounts_take_a_request_the_tokens_or_the_micro_usd_per_slot(n: int) -> None:
    kinds = [LimitKind.TPM, LimitKind.RPM, LimitKind.BUDGET, LimitKind.DAILY_REQUESTS, LimitKind.TPM][:n]
    lp = LimitPlan([Limit("key:k", k, 10, "daily" if k is LimitKind.BUDGET else "") for k in kinds])
    by_kind = {LimitKind.TPM: 120, LimitKind.RPM: 1, LimitKind.BUDGET: 250_000, LimitKind.DAILY_REQUESTS: 1}
    assert lp.amounts(120, 0.25) == tuple(by_kind[k] for k in kinds)
    # Negative tokens and NaN or negative costs take nothing; micro-USD round half to even like round().
    never = {LimitKind.TPM: 0, LimitKind.RPM: 1, LimitKind.BUDGET: 0, LimitKind.DAILY_REQUESTS: 1}
    assert lp.amounts(-5, math.nan) == tuple(never[k] for k in kinds)
    assert lp.amounts(-5, -1.0) == tuple(never[k] for k in kinds)
    half = {LimitKind.TPM: 7, LimitKind.RPM: 1, LimitKind.BUDGET: 2, LimitKind.DAILY_REQUESTS: 1}
    assert lp.amounts(7, 0.0000025) == tuple(half[k] for k in kinds)


def test_limit_plan_knows_when_limits_share_a_counter() -> None:
    def shared(*limits: Limit) -> bool:
        return LimitPlan(limits).shared

    assert not shared()
    assert not shared(rpm("key:k", 1), tpm("key:k", 1), Limit("key:k", LimitKind.DAILY_REQUESTS, 1))
    assert not shared(rpm("key:k", 1), rpm("user:k", 1), rpm("key:k2", 1))
    assert not shared(budget("key:k", 1, "daily"), budget("key:k", 1, "monthly"), budget("key:k", 1, "total"))
    assert shared(rpm("key:k", 1), tpm("key:k", 5), rpm("key:k", 2))
    assert shared(budget("user:u", 1, "monthly"), budget("user:u", 2, "monthly"))
    # Decided once, from keys of one moment: it must agree with the keys of any other moment.
    rng = random.Random(7)
    pool = [rpm("key:k", 1), rpm("ip:a:b", 1), tpm("key:k", 1), Limit("key:k", LimitKind.DAILY_REQUESTS, 1)]
    pool += [budget("key:k", 1, p) for p in ("daily", "monthly", "total")]
    for _ in range(200):
        lp = LimitPlan(rng.choices(pool, k=rng.randint(1, 4)))
        for now in (NOON, ts(2024, 12, 31, 23, 59, 59), ts(2031, 1, 1)):
            assert lp.shared == (len({s.key for s in lp.slots(now)}) < len(lp))


def test_first_refusal_without_shared_keys_matches_the_general_check() -> None:
    limits = [
        rpm("ip:x", 3),
        tpm("key:k", 100),
        Limit("key:k", LimitKind.DAILY_REQUESTS, 2),
        budget("u:u", 1, "daily"),
    ]
    fast, general = LimitPlan(limits), LimitPlan(limits)
    general.shared = True  # the same slots, checked the way slots sharing keys are
    assert not fast.shared
    slots = fast.slots(NOON)
    rng = random.Random(11)
    refusals = set()
    for _ in range(2000):
        stored = [rng.randint(0, slot.cap + 1) for slot in slots]
        amounts = [rng.choice([0, 1, slot.cap // 2, slot.cap]) for slot in slots]
        found = first_refusal(fast, slots, stored, amounts)
        assert found == first_refusal(general, slots, stored, amounts)
        refusals.add(found)
    assert refusals == {None, 0, 1, 2, 3}


async def test_limits_sharing_a_counter_see_what_earlier_ones_take(counters: MemoryCounters) -> None:
    # Two RPM limits of 3 on one counter: each admission takes 2 from it, so the second must be refused
    # by the second limit (2 + 1 taken by the first slot leaves no room). A check that ignored the
    # earlier slot's take would admit it and push the counter to 4.
    limits = [rpm("key:k", 3), rpm("key:k", 3), tpm("key:k", 100), tpm("key:k", 150)]
    assert LimitPlan(limits).shared
    first = await counters.admit(limits, tokens=40, cost=0.0, now=NOON)
    assert first.allowed
    assert [(h.key, h.amount) for h in first.reservation.held] == [(f"tpm:{int(NOON) - 30}:key:k", 40)] * 2
    assert first.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "60",
        "x-ratelimit-reset-tokens": "30s",
    }
    assert [await used(counters, lim) for lim in limits] == [2, 2, 80, 80]
    second = await counters.admit(limits, tokens=40, cost=0.0, now=NOON)
    assert not second.allowed
    assert second.denied is limits[1]
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    assert [await used(counters, lim) for lim in limits] == [2, 2, 80, 80]
    # Both held entries point at the same counter: settling swaps each estimate for the real usage.
    await counters.settle(first.reservation, tokens=10, cost=0.0)
    assert await used(counters, limits[2]) == 20
    await counters.release(first.reservation)  # after a settle: keeps the real usage
    assert await used(counters, limits[2]) == 20


async def test_headers_for_a_mix_of_limits_are_as_before(counters: MemoryCounters) -> None:
    # Expected values recorded from the implementation before the fast paths were added.
    limits = [
        rpm("ip:1.2.3.4", 5),
        rpm("key:k1", 3),
        tpm("key:k1", 1000),
        tpm("user:u1", 900),
        Limit("key:k1", LimitKind.DAILY_REQUESTS, 10),
        budget("user:u1", 1.0, "monthly"),
        rpm("user:u1", 3),
    ]
    lp = LimitPlan(limits)

    def headers(requests: str, tokens: str, reset: str) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": requests,
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": "900",
            "x-ratelimit-remaining-tokens": tokens,
            "x-ratelimit-reset-tokens": reset,
        }

    window = int(NOON) - 30
    d = await counters.admit(lp, tokens=400, cost=0.1, now=NOON)
    assert (d.allowed, d.headers) == (True, headers("2", "500", "30s"))
    assert [(h.key, h.kind, h.amount) for h in d.reservation.held] == [
        (f"tpm:{window}:key:k1", LimitKind.TPM, 400),
        (f"tpm:{window}:user:u1", LimitKind.TPM, 400),
        ("usd:m202403:user:u1", LimitKind.BUDGET, 100_000),
    ]
    d = await counters.admit(lp, tokens=500, cost=0.1, now=NOON + 1.25)
    assert (d.allowed, d.headers) == (True, headers("1", "0", "28.75s"))
    for dt, reset in ((2.5, "27.5s"), (29.9996, "0s")):
        d = await counters.admit(lp, tokens=0, cost=0.0, now=NOON + dt)
        assert (d.allowed, d.denied, d.headers) == (False, limits[3], headers("1", "0", reset))
        assert d.retry_after == pytest.approx(30 - dt, abs=1e-6)
        assert d.reservation.held == []


async def test_headers_break_ties_toward_the_smaller_limit(counters: MemoryCounters) -> None:
    for limits in ([tpm("key:k", 1000), tpm("user:u", 900)], [tpm("user:u", 900), tpm("key:k", 1000)]):
        c = MemoryCounters()
        d = await c.admit(limits, tokens=100, cost=0.0, now=NOON)
        await c.settle(d.reservation, tokens=5000, cost=0.0)  # both counters far over their limits
        refused = await c.admit(limits, tokens=1, cost=0.0, now=NOON)
        assert refused.denied is limits[0]
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert refused.headers["x-ratelimit-limit-tokens"] == "900"  # both have 0 left: the smaller limit


async def test_an_expired_counter_reads_as_new_and_restarts(counters: MemoryCounters) -> None:
    # A total budget's counter lives 400 days after its last admission; past that it starts over.
    limit = budget("user:u1", 1.0, "total")
    assert (await counters.admit([limit], tokens=0, cost=1.0, now=NOON)).allowed
    day = 86_400
    assert not (await counters.admit([limit], tokens=0, cost=0.5, now=NOON + 400 * day - 1)).allowed
    fresh = await counters.admit([limit], tokens=0, cost=0.5, now=NOON + 400 * day)
    assert fresh.allowed
    assert await used(counters, limit, now=NOON + 400 * day) == 0.5
    # ...and its new expiry counts from that admission.
    assert await used(counters, limit, now=NOON + 799 * day) == 0.5
    assert await used(counters, limit, now=NOON + 800 * day) == 0


async def test_admission_keeps_one_plan_per_caller_and_builds_a_new_one_when_its_limits_change() -> None:
    admission = Admission(MemoryCounters(), Pricing({}), LimitsConfig())

    def caller(rpm: int) -> Principal:
        return Principal("key:k", key_id="k", key_limits=LimitSpec(rpm=rpm))

    first = admission._limit_plan(caller(1), None)
    assert admission._limit_plan(caller(1), None) is first  # a refreshed key-cache entry, same limits
    changed = admission._limit_plan(caller(2), None)
    assert changed is not first and changed.caps == (2,)
    await admission.admit(caller(1), None, {"max_tokens": 1}, 10, [])
    with pytest.raises(errors.RateLimited):
        await admission.admit(caller(1), None, {"max_tokens": 1}, 10, [])
