"""Routing rules of the attempt loop, without a network: a scripted provider stands in at the seam."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from portway.config import RoutingConfig
from portway.errors import UpstreamBadRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from portway.gateway.attempts import AttemptRunner
from portway.gateway.keypool import KeyPool
from portway.gateway.router import Target
from portway.providers.base import ChatCall, ChatStream, Completion, FailureKind, UpstreamFailure, Usage


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
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
        if step == "slow":
            self.clock.t += call.timeout
            raise UpstreamFailure(FailureKind.TIMEOUT, "timed out")
        if isinstance(step, tuple):
            return _raise(UpstreamFailure(FailureKind.RATE_LIMIT, "429", status=429, retry_after=step[1]))
        status = {"auth": 401, "rate_limit": 429, "server": 500, "bad_request": 400}.get(step.value)
        raise UpstreamFailure(step, f"failed {step.value}", status=status)

    async def aclose(self) -> None:
        pass


def _raise(exc: Exception) -> Any:
    raise exc


def make(
    steps: dict[str, dict[tuple[str, str | None], list[Any]]],
    keys: dict[str, list[str | None]],
    **cfg: Any,
) -> tuple[AttemptRunner, dict[str, Scripted], dict[str, KeyPool], Clock]:
    clock = Clock()
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
    runner, prov, _, _ = make(
        {"a": {("m1", "*"): ["slow"]}, "b": {("m2", "*"): ["slow"]}}, {"a": ["k"], "b": ["k"]}
    )
    with pytest.raises(UpstreamTimeout) as err:
        await runner.run([A, B], {}, False)
    assert err.value.status_code == 504
    # The first attempt consumed the whole deadline: nothing else was tried.
    assert len(prov["a"].calls) == 1 and not prov["b"].calls
    assert prov["a"].calls[0].timeout == pytest.approx(60.0)


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
