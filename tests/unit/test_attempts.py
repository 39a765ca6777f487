"""Routing rules of the attempt loop, without a network: a scripted provider stands in at the seam."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from portway.config import RoutingConfig
from portway.errors import UpstreamBadRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from portway.providers.base import ChatCall, ChatStream, Completion, FailureKind, UpstreamFailure, Usage
from portway.routing.attempts import AttemptRunner
from portway.routing.keypool import KeyPool
from portway.routing.router import Target


class Clock:
    def __init__(self, tick: float = 0.0) -> None:
        self.t = 1000.0
        self.tick = tick  # time each reading costs: the loop's own overhead between steps
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.t += self.tick
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


class Scripted:
    """Each call pops the next step for its (model, key): 'ok', a FailureKind, or ('429', retry_after)."""

    needs_key = True

    def __init__(self, name: str, clock: Clock, steps: dict[tuple[str, str | None], list[Any]]) -> None:
        self.name = name
        self.clock = clock
        self.steps = steps
        self.calls: list[ChatCall] = []

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        self.calls.append(call)
        queue = self.steps.get((call.model, call.key)) or self.steps.get((call.model, "*")) or ["ok"]
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if step == "ok":
            return Completion(b'{"choices":[]}', Usage(1, 1), call.model)
        if step == "slow":  # hung: the attempt's own timeout ends it
            self.clock.t += call.timeout
            raise UpstreamFailure(FailureKind.TIMEOUT, "timed out")
        if isinstance(step, tuple) and step[0] == "after":  # ("after", seconds, step): takes that long
            if step[1] > call.timeout:
                self.clock.t += call.timeout
                raise UpstreamFailure(FailureKind.TIMEOUT, "timed out")
            self.clock.t += step[1]
            step = step[2]
            if step == "ok":
                return Completion(b'{"choices":[]}', Usage(1, 1), call.model)
        if isinstance(step, tuple):
            return _raise(UpstreamFailure(FailureKind.RATE_LIMIT, "429", status=429, retry_after=step[1]))
        status = {"auth": 401, "forbidden": 403, "rate_limit": 429, "server": 500, "bad_request": 400}.get(
            step.value
        )
        raise UpstreamFailure(step, f"failed {step.value}", status=status)

    async def aclose(self) -> None:
        pass


def _raise(exc: Exception) -> Any:
    raise exc


def make(
    steps: dict[str, dict[tuple[str, str | None], list[Any]]],
    keys: dict[str, list[str | None]],
    tick: float = 0.0,
    **cfg: Any,
) -> tuple[AttemptRunner, dict[str, Scripted], dict[str, KeyPool], Clock]:
    clock = Clock(tick)
    rc = RoutingConfig(**{"backoff_base": 0.1, **cfg})
    providers = {name: Scripted(name, clock, s) for name, s in steps.items()}
    pools = {
        name: KeyPool(
            name, keys[name], breaker_threshold=rc.breaker_threshold, breaker_cooldown=rc.breaker_cooldown
        )
        for name in steps
    }
    runner = AttemptRunner(providers, pools, rc, clock=clock, sleep=clock.sleep, rand=lambda: 1.0)
    return runner, providers, pools, clock


A, B = Target("a", "m1"), Target("b", "m2")


async def test_first_target_success_no_fallback() -> None:
    runner, prov, _, _ = make({"a": {}, "b": {}}, {"a": ["k1"], "b": ["k2"]})
    out = await runner.run([A, B], {"messages": []}, False)
    assert out.target == A and len(prov["b"].calls) == 0
    assert [a.kind for a in out.attempts] == ["ok"]


async def test_auth_failure_drops_key_and_tries_next_key() -> None:
    runner, prov, pools, _ = make({"a": {("m1", "bad"): [FailureKind.AUTH]}}, {"a": ["bad", "good"]})
    out = await runner.run([A], {}, False)
    assert [c.key for c in prov["a"].calls] == ["bad", "good"] and out.target == A
    assert pools["a"].states[0].disabled
    await runner.run([A], {}, False)  # the bad key is never used again
    assert [c.key for c in prov["a"].calls][2:] == ["good"]


async def test_rate_limit_cools_key_for_retry_after_then_next_target() -> None:
    runner, prov, pools, clock = make(
        {"a": {("m1", "*"): [("429", 5.0)]}, "b": {}}, {"a": ["k1", "k2"], "b": ["kb"]}, max_attempts=5
    )
    out = await runner.run([A, B], {}, False)
    assert [c.key for c in prov["a"].calls] == ["k1", "k2"]  # next key first...
    assert out.target == B  # ...then next target
    assert not pools["a"].states[0].usable(clock.t)
    await runner.run([A, B], {}, False)
    assert len(prov["a"].calls) == 2  # both keys still cooling down: skipped without a call
    clock.t += 5.0
    assert pools["a"].states[0].usable(clock.t)


async def test_rate_limit_without_retry_after_uses_default_cooldown() -> None:
    runner, _, pools, clock = make(
        {"a": {("m1", "*"): [FailureKind.RATE_LIMIT]}, "b": {}},
        {"a": ["k1"], "b": ["kb"]},
        rate_limit_cooldown=7,
    )
    await runner.run([A, B], {}, False)
    assert pools["a"].states[0].cooldown_until == pytest.approx(clock.t + 7)


async def test_server_error_retries_same_target_with_backoff_then_succeeds() -> None:
    runner, prov, _, clock = make(
        {"a": {("m1", "*"): [FailureKind.SERVER, "ok"]}, "b": {}}, {"a": ["k"], "b": ["k"]}
    )
    out = await runner.run([A, B], {}, False)
    assert out.target == A and len(prov["a"].calls) == 2 and not prov["b"].calls
    assert clock.slept and clock.slept[0] <= 0.2  # full jitter below base * 2^1


@pytest.mark.parametrize("kind", [FailureKind.SERVER, FailureKind.CONNECTION, FailureKind.BAD_RESPONSE])
async def test_retryable_failures_fall_back_after_retries(kind: FailureKind) -> None:
    runner, prov, _, _ = make({"a": {("m1", "*"): [kind]}, "b": {}}, {"a": ["k"], "b": ["k"]})
    out = await runner.run([A, B], {}, False)
    assert out.target == B and len(prov["a"].calls) == 2  # 1 try + retries_per_target=1


async def test_bad_request_is_returned_without_fallback() -> None:
    runner, prov, _, _ = make(
        {"a": {("m1", "*"): [FailureKind.BAD_REQUEST]}, "b": {}}, {"a": ["k"], "b": ["k"]}
    )
    with pytest.raises(UpstreamBadRequest) as err:
        await runner.run([A, B], {}, False)
    assert err.value.status_code == 400 and not prov["b"].calls and len(prov["a"].calls) == 1


async def test_max_attempts_caps_upstream_calls() -> None:
    fail = {("m", "*"): [FailureKind.SERVER]}
    runner, prov, _, _ = make(
        {"a": fail, "b": fail, "c": fail}, {"a": ["k"], "b": ["k"], "c": ["k"]}, max_attempts=3
    )
    with pytest.raises(UpstreamError) as err:
        await runner.run([Target("a", "m"), Target("b", "m"), Target("c", "m")], {}, False)
    assert sum(len(p.calls) for p in prov.values()) == 3 and not prov["c"].calls
    attempts = err.value.to_dict()["error"]["attempts"]
    assert [(a["provider"], a["status"]) for a in attempts] == [("a", 500), ("a", 500), ("b", 500)]


async def test_all_fail_502_lists_attempts_without_keys() -> None:
    runner, _, _, _ = make({"a": {("m1", "*"): [FailureKind.SERVER]}}, {"a": ["sk-secret-123"]})
    with pytest.raises(UpstreamError) as err:
        await runner.run([A], {}, False)
    assert err.value.status_code == 502 and err.value.code == "upstream_error"
    assert "sk-secret-123" not in err.value.body().decode()


async def test_one_deadline_across_attempts_gives_504() -> None:
    runner, prov, pools, clock = make(
        {"a": {("m1", "*"): ["slow"]}, "b": {("m2", "*"): ["slow"]}}, {"a": ["k"], "b": ["k"]}
    )
    started = clock.t
    with pytest.raises(UpstreamTimeout) as err:
        await runner.run([A, B], {}, False)
    assert err.value.status_code == 504
    # attempt_timeout (30) caps the first try; its retry leaves b its min_attempt_time; b hits the deadline.
    timeouts = [c.timeout for c in prov["a"].calls + prov["b"].calls]
    assert timeouts == pytest.approx([30.0, 29.3, 0.5])
    assert clock.t - started == pytest.approx(60.0)
    attempts = err.value.to_dict()["error"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["timeout", "timeout", "deadline"]
    assert pools["a"].states[0].breaker.failures == 2  # a's own timeouts count against it...
    assert pools["b"].states[0].breaker.failures == 0  # ...the deadline ending b's attempt does not


async def test_hung_primary_leaves_the_fallback_its_share_and_healthy_breaker_stays_closed() -> None:
    # Issue 11 #3: [hung, healthy] with a 3 s deadline was a 504, and healthy's breaker opened.
    runner, prov, pools, clock = make(
        {"a": {("m1", "*"): ["slow"]}, "b": {}},
        {"a": ["k"], "b": ["k"]},
        tick=1e-5,
        deadline=3,
        breaker_threshold=1,
    )
    for _ in range(7):
        started = clock.t
        out = await runner.run([A, B], {}, False)
        assert out.target == B and clock.t - started <= 3
        assert pools["b"].states[0].breaker.state(clock.t) == "closed"
    assert prov["a"].calls[0].timeout == pytest.approx(2.5, abs=1e-3)  # 3 s less min_attempt_time for b
    assert [a.kind for a in out.attempts][-1] == "ok"
    out = await runner.run([B], {}, False)  # direct calls to healthy still work
    assert out.target == B


async def test_attempt_ended_by_the_deadline_is_nobodys_failure() -> None:
    runner, _, pools, clock = make(
        {"b": {("m2", "*"): [("after", 10.0, "ok")]}}, {"b": ["k"]}, deadline=3, breaker_threshold=1
    )
    with pytest.raises(UpstreamTimeout) as err:
        await runner.run([B], {}, False)
    assert err.value.status_code == 504
    assert [a["outcome"] for a in err.value.to_dict()["error"]["attempts"]] == ["deadline"]
    state = pools["b"].states[0]
    assert state.breaker.failures == 0 and state.breaker.state(clock.t) == "closed"
    assert state.cooldown_until <= clock.t and not state.disabled


async def test_per_attempt_timeout_is_the_targets_timeout_failure() -> None:
    runner, prov, pools, clock = make(
        {"a": {("m1", "*"): [("after", 10.0, "ok")]}, "b": {}},
        {"a": ["k"], "b": ["k"]},
        attempt_timeout=2,
        retries_per_target=0,
        breaker_threshold=1,
    )
    out = await runner.run([A, B], {}, False)
    assert out.target == B and prov["a"].calls[0].timeout == 2
    assert [a.kind for a in out.attempts] == ["timeout", "ok"]
    assert pools["a"].states[0].breaker.state(clock.t) == "open"


async def test_no_attempt_starts_with_less_than_min_attempt_time_left() -> None:
    runner, prov, _, _ = make(
        {"a": {("m1", "*"): [("after", 2.8, FailureKind.SERVER)]}},
        {"a": ["k"]},
        deadline=3,
        backoff_base=0.001,
    )
    with pytest.raises(UpstreamTimeout) as err:
        await runner.run([A], {}, False)
    assert len(prov["a"].calls) == 1  # no retry with 0.2 s left
    assert err.value.status_code == 504 and "request deadline exceeded" in err.value.message
    assert [a["outcome"] for a in err.value.to_dict()["error"]["attempts"]] == ["server"]


async def test_retry_gives_way_to_the_next_targets_share() -> None:
    runner, prov, _, _ = make(
        {"a": {("m1", "*"): [("after", 2.2, FailureKind.SERVER)]}, "b": {}},
        {"a": ["k"], "b": ["k"]},
        deadline=3,
    )
    out = await runner.run([A, B], {}, False)
    assert out.target == B and len(prov["a"].calls) == 1  # retrying a would leave b under 0.5 s


async def test_share_counts_only_targets_that_could_still_be_tried() -> None:
    runner, prov, pools, _ = make(
        {"a": {}, "b": {}, "c": {}}, {"a": ["k"], "b": ["k"], "c": ["k"]}, deadline=10, max_attempts=2
    )
    await runner.run([A, B, Target("c", "m")], {}, False)
    assert prov["a"].calls[0].timeout == pytest.approx(9.5)  # room for one more call, not two
    pools["b"].states[0].disabled, pools["b"].states[0].recheck_at = True, float("inf")
    await runner.run([A, B], {}, False)
    assert prov["a"].calls[1].timeout == pytest.approx(10)  # b has no usable key: nothing to keep for it


async def test_stream_attempt_keeps_first_byte_timeout_within_its_share() -> None:
    runner, prov, _, _ = make({"a": {}, "b": {}}, {"a": ["k"], "b": ["k"]}, deadline=3, first_byte_timeout=5)
    await runner.run([A, B], {}, True)
    assert prov["a"].calls[0].timeout == pytest.approx(2.5)
    runner, prov, _, _ = make({"a": {}, "b": {}}, {"a": ["k"], "b": ["k"]}, deadline=30, first_byte_timeout=5)
    await runner.run([A, B], {}, True)
    assert prov["a"].calls[0].timeout == 5


async def test_forbidden_model_is_the_targets_failure_and_the_key_stays() -> None:
    # Issue 11 #5: a 403 for one model must not take the provider's only key away from its other models.
    m3 = Target("a", "m3")
    runner, prov, pools, clock = make({"a": {("m1", "k"): [FailureKind.FORBIDDEN]}}, {"a": ["k"]})
    out = await runner.run([A, m3], {}, False)
    assert out.target == m3 and [c.model for c in prov["a"].calls] == ["m1", "m3"]  # no retry of m1
    assert [a.kind for a in out.attempts] == ["forbidden", "ok"]
    state = pools["a"].states[0]
    assert not state.disabled and state.usable(clock.t) and state.breaker.failures == 0
    assert (await runner.run([m3], {}, False)).target == m3


async def test_rejected_key_is_rechecked_after_key_recheck_after() -> None:
    runner, prov, pools, clock = make(
        {"a": {("m1", "k"): [FailureKind.AUTH, "ok"]}}, {"a": ["k"]}, key_recheck_after=60
    )
    with pytest.raises(UpstreamError):
        await runner.run([A], {}, False)
    with pytest.raises(UpstreamUnavailable) as err:  # out of the pool: no call at all
        await runner.run([A], {}, False)
    assert err.value.headers["Retry-After"] == "60" and len(prov["a"].calls) == 1
    clock.t += 60
    assert (await runner.run([A], {}, False)).target == A  # re-probed: the key works again
    assert not pools["a"].states[0].disabled


async def test_stream_attempt_uses_first_byte_timeout() -> None:
    runner, prov, _, _ = make({"a": {}}, {"a": ["k"]}, first_byte_timeout=5)
    await runner.run([A], {}, True)
    assert prov["a"].calls[0].timeout == 5


async def test_breaker_opens_after_threshold_and_half_open_probe_closes_it() -> None:
    runner, prov, pools, clock = make(
        {"a": {("m1", "*"): [FailureKind.SERVER]}, "b": {}},
        {"a": ["k"], "b": ["k"]},
        breaker_threshold=2,
        breaker_cooldown=30,
        retries_per_target=0,
    )
    for _ in range(2):
        await runner.run([A, B], {}, False)
    assert pools["a"].states[0].breaker.state(clock.t) == "open"
    calls = len(prov["a"].calls)
    out = await runner.run([A, B], {}, False)
    assert len(prov["a"].calls) == calls and out.target == B  # skipped while open
    assert out.attempts[0].kind == "skipped"
    clock.t += 30
    prov["a"].steps[("m1", "*")] = ["ok"]
    out = await runner.run([A, B], {}, False)
    assert out.target == A and pools["a"].states[0].breaker.state(clock.t) == "closed"


async def test_half_open_probe_failure_reopens() -> None:
    runner, _, pools, clock = make(
        {"a": {("m1", "*"): [FailureKind.SERVER]}, "b": {}},
        {"a": ["k"], "b": ["k"]},
        breaker_threshold=1,
        retries_per_target=0,
    )
    await runner.run([A, B], {}, False)
    clock.t += 30
    await runner.run([A, B], {}, False)
    assert pools["a"].states[0].breaker.state(clock.t) == "open"


async def test_all_keys_unavailable_is_503_with_retry_after() -> None:
    runner, _, _, _ = make({"a": {("m1", "*"): [("429", 12.0)]}}, {"a": ["k"]})
    with pytest.raises(UpstreamUnavailable) as err:
        await runner.run([A], {}, False)
    assert err.value.status_code == 503 and err.value.headers["Retry-After"] == "12"


async def test_key_pool_picks_least_in_flight() -> None:
    pool = KeyPool("p", ["k1", "k2", "k3"], breaker_threshold=3, breaker_cooldown=10)
    a = pool.acquire(0)
    b = pool.acquire(0)
    assert a is not None and b is not None and {a.key, b.key} == {"k1", "k2"}
    pool.release(a)
    c = pool.acquire(0)
    d = pool.acquire(0)
    assert c is not None and d is not None
    assert {c.key, d.key} == {"k3", a.key}


class _Stream:
    usage = None
    served_model = "m1"

    def __aiter__(self) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            yield b"data: {}\n\n"

        return gen()

    async def aclose(self) -> None:
        pass


async def test_stream_holds_key_slot_until_released() -> None:
    runner, prov, pools, _ = make({"a": {}}, {"a": ["k"]})

    async def chat(call: ChatCall) -> ChatStream:
        return _Stream()

    prov["a"].chat = chat  # type: ignore[method-assign]
    out = await runner.run([A], {}, True)
    assert pools["a"].states[0].in_flight == 1
    out.release()
    out.release()
    assert pools["a"].states[0].in_flight == 0
