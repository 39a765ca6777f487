"""The attempt loop: one deadline across every try, key pools, retries with full-jitter backoff, fallback.

Outcome classes (from providers.base.FailureKind):
  AUTH        -> the key is bad: drop it from the pool, try the provider's next key
  RATE_LIMIT  -> cool the key down for Retry-After, try the next key, then the next target
  SERVER, TIMEOUT, CONNECTION, BAD_RESPONSE -> retry this target with backoff, then the next target
  BAD_REQUEST -> the client's fault: returned as is, no fallback
At most `max_attempts` upstream calls per request, and never past the request's deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portway.config import RoutingConfig
from portway.errors import (
    PortwayError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from portway.gateway.keypool import KeyPool, KeyState
from portway.gateway.router import Target
from portway.providers.base import ChatCall, ChatStream, Completion, FailureKind, Provider, UpstreamFailure

_RETRYABLE = frozenset(
    {FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.BAD_RESPONSE}
)
_NEXT_KEY = frozenset({FailureKind.AUTH, FailureKind.RATE_LIMIT})


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    key: str | None  # the key's label (groq#2), never the key
    status: int | None
    error: str  # "" on success
    kind: str  # "ok", a FailureKind value, "skipped" or "deadline"
    latency_ms: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "outcome": self.kind,
            "error": self.error,
        }


@dataclass(slots=True)
class Outcome:
    result: Completion | ChatStream
    target: Target
    attempts: list[Attempt]
    release: Callable[[], None] = field(default=lambda: None)  # frees the key's in-flight slot


class AttemptRunner:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        pools: Mapping[str, KeyPool],
        cfg: RoutingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.providers = providers
        self.pools = pools
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self.rand = rand

    async def run(self, targets: list[Target], payload: dict[str, Any], stream: bool) -> Outcome:
        deadline = self.clock() + self.cfg.deadline
        attempts: list[Attempt] = []
        for target in targets:
            if len(self._calls(attempts)) >= self.cfg.max_attempts or self.clock() >= deadline:
                break
            outcome = await self._try_target(target, payload, stream, deadline, attempts)
            if outcome is not None:
                return outcome
        if self.clock() >= deadline and (not attempts or attempts[-1].kind != "deadline"):
            attempts.append(Attempt("-", "-", None, None, "request deadline exceeded", "deadline"))
        raise self._final_error(targets, attempts)

    @staticmethod
    def _calls(attempts: list[Attempt]) -> list[Attempt]:
        return [a for a in attempts if a.kind not in ("skipped", "deadline")]

    async def _try_target(
        self, target: Target, payload: dict[str, Any], stream: bool, deadline: float, attempts: list[Attempt]
    ) -> Outcome | None:
        provider, pool = self.providers[target.provider], self.pools[target.provider]
        retries = 0
        tried = False
        while len(self._calls(attempts)) < self.cfg.max_attempts:
            now = self.clock()
            remaining = deadline - now
            if remaining <= 0:
                return None
            state = pool.acquire(now)
            if state is None:
                if not tried:
                    attempts.append(
                        Attempt(target.provider, target.model, None, None, _no_key_reason(pool), "skipped")
                    )
                return None
            tried = True
            timeout = min(remaining, self.cfg.first_byte_timeout) if stream else remaining
            call = ChatCall(payload, target.model, stream, state.key, timeout, self.cfg.stream_idle_timeout)
            failure = await self._attempt(provider, pool, state, target, call, attempts)
            if not isinstance(failure, UpstreamFailure):
                return failure
            if failure.kind is FailureKind.BAD_REQUEST:
                raise UpstreamBadRequest(
                    failure.message,
                    status=failure.status or 400,
                    code=failure.error_code,
                    param=failure.param,
                )
            if failure.kind in _NEXT_KEY:
                continue
            if failure.kind not in _RETRYABLE or retries >= self.cfg.retries_per_target:
                return None
            retries += 1
            await self._backoff(retries, deadline)
        return None

    async def _attempt(
        self,
        provider: Provider,
        pool: KeyPool,
        state: KeyState,
        target: Target,
        call: ChatCall,
        attempts: list[Attempt],
    ) -> Outcome | UpstreamFailure:
        started = self.clock()
        try:
            result = await provider.chat(call)
        except UpstreamFailure as failure:
            now = self.clock()
            retry_after = failure.retry_after
            if failure.kind is FailureKind.RATE_LIMIT and retry_after is None:
                retry_after = self.cfg.rate_limit_cooldown
            pool.report(state, failure.kind, now, retry_after)
            pool.release(state)
            attempts.append(
                Attempt(
                    target.provider,
                    target.model,
                    state.label,
                    failure.status,
                    failure.message,
                    failure.kind.value,
                    (now - started) * 1000,
                )
            )
            return failure
        except BaseException:
            state.breaker.abandon()
            pool.release(state)
            raise
        pool.report(state, None, self.clock(), None)
        attempts.append(
            Attempt(
                target.provider, target.model, state.label, 200, "", "ok", (self.clock() - started) * 1000
            )
        )
        release = _once(lambda: pool.release(state))
        if isinstance(result, Completion):
            release()
        return Outcome(result, target, attempts, release)

    async def _backoff(self, retry: int, deadline: float) -> None:
        """Full jitter: uniform in [0, min(cap, base * 2^retry)], and never past the deadline."""
        ceiling = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**retry))
        delay = min(self.rand() * ceiling, max(0.0, deadline - self.clock()))
        if delay > 0:
            await self.sleep(delay)

    def _final_error(self, targets: list[Target], attempts: list[Attempt]) -> PortwayError:
        if not targets:
            return UpstreamUnavailable("No enabled provider serves this model (are its API keys set?)")
        summary = "; ".join(
            f"{a.provider}/{a.model}: " + (f"HTTP {a.status}" if a.status else a.error) for a in attempts
        )
        extra = {"attempts": [a.public() for a in attempts if a.kind != "deadline"]}
        last = attempts[-1].kind if attempts else "skipped"
        if last in ("deadline", FailureKind.TIMEOUT.value):
            return UpstreamTimeout(f"All upstream attempts failed in time: {summary}", extra=extra)
        if last in ("skipped", FailureKind.RATE_LIMIT.value):
            headers = self._retry_after(targets)
            return UpstreamUnavailable(f"No upstream available: {summary}", extra=extra, headers=headers)
        return UpstreamError(f"All upstream attempts failed: {summary}", extra=extra)

    def _retry_after(self, targets: list[Target]) -> dict[str, str]:
        now = self.clock()
        waits = [w for t in targets if (w := self.pools[t.provider].next_available_in(now)) is not None]
        return {"Retry-After": str(max(1, int(min(waits) + 0.999)))} if waits else {}


def _no_key_reason(pool: KeyPool) -> str:
    if all(s.disabled for s in pool.states):
        return "every API key of this provider was rejected by the upstream"
    return "every API key is cooling down or has an open circuit breaker"


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return call
