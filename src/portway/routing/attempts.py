"""The attempt loop: one deadline across every try, key pools, retries with full-jitter backoff, fallback.

Outcome classes (from providers.base.FailureKind):
  AUTH        -> the key is bad: out of the pool (re-probed after key_recheck_after), try the next key
  FORBIDDEN   -> this key may not use this model: the target's failure, next target; the key stays
  RATE_LIMIT  -> cool the key down for Retry-After, try the next key, then the next target
  SERVER, TIMEOUT, CONNECTION, BAD_RESPONSE -> retry this target with backoff, then the next target
  BAD_REQUEST -> the client's fault: returned as is, no fallback
At most `max_attempts` upstream calls per request, and never past the request's deadline.

Time: one attempt takes at most `attempt_timeout`, and less when later targets need their share: each
target that could still be tried is kept `min_attempt_time` of the deadline. No attempt starts with less than
`min_attempt_time` left. An attempt cut short by the request's deadline is nobody's failure: it is recorded
as "deadline" and touches neither breaker nor key; one cut by its own timeout is the target's TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
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
from portway.providers.base import (
    ChatCall,
    ChatStream,
    Completion,
    FailureKind,
    Provider,
    UpstreamFailure,
    speaks_messages,
)
from portway.providers.media import MediaCall, MediaResult, Task, Upload
from portway.routing.health import Health
from portway.routing.keypool import KeyPool, KeyState
from portway.routing.router import Target
from portway.telemetry.metrics import RequestMetrics
from portway.telemetry.tracing import Tracer

log = logging.getLogger("portway.routing")

_RETRYABLE = frozenset(
    {FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.BAD_RESPONSE}
)
_NEXT_KEY = frozenset({FailureKind.AUTH, FailureKind.RATE_LIMIT})
# A timeout this close to the request's deadline is the deadline's (timers may fire a hair early).
_DEADLINE_SLACK = 1e-3
# Float slack when comparing what is left with min_attempt_time (shares are computed by subtraction).
_EPS = 1e-6


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


Result = Completion | ChatStream | MediaResult


@dataclass(slots=True)
class ChatJob:
    """What one chat request asks of each attempt."""

    payload: dict[str, Any]
    stream: bool
    idle_timeout: float

    async def __call__(self, provider: Provider, model: str, key: str | None, timeout: float) -> Result:
        return await provider.chat(
            ChatCall(self.payload, model, self.stream, key, timeout, self.idle_timeout)
        )


@dataclass(slots=True)
class MessagesJob(ChatJob):
    """A /v1/messages request: passed through untranslated (`messages`, the client's body) to a provider
    that speaks Anthropic's Messages API (`speaks_messages`), served as chat (`payload`) by any other."""

    messages: dict[str, Any] = field(default_factory=dict)

    async def __call__(self, provider: Provider, model: str, key: str | None, timeout: float) -> Result:
        if not speaks_messages(provider):
            return await ChatJob.__call__(self, provider, model, key, timeout)
        call = ChatCall(self.messages, model, self.stream, key, timeout, self.idle_timeout)
        result: Result = await provider.messages_passthrough(call)  # type: ignore[attr-defined]
        return result


@dataclass(slots=True)
class MediaJob:
    """What one media request (embeddings, images, audio, video) asks of each attempt. `stream`: the answer
    may be relayed as produced, so only its first bytes are bounded by the first-byte timeout."""

    task: Task
    payload: dict[str, Any]
    files: list[Upload] = field(default_factory=list)
    stream: bool = False

    async def __call__(self, provider: Provider, model: str, key: str | None, timeout: float) -> Result:
        return await provider.media(MediaCall(self.task, self.payload, model, key, timeout, self.files))


def _holds_key(result: Result) -> bool:
    """A streamed answer keeps its key's in-flight slot until the stream is closed."""
    if isinstance(result, Completion):
        return False
    if isinstance(result, MediaResult):
        return result.stream is not None
    return True


@dataclass(slots=True)
class Outcome:
    result: Result
    target: Target
    attempts: list[Attempt]
    release: Callable[[], None] = field(default=lambda: None)  # frees the key's in-flight slot


@dataclass(slots=True)
class _Run:
    """One request's attempts and what is left of its deadline."""

    deadline: float
    due: float  # when the last attempt or backoff was due to end at the latest
    attempts: list[Attempt] = field(default_factory=list)
    calls: int = 0  # upstream calls made
    out_of_time: bool = False  # stopped by the deadline with something still to try


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
        health: Health | None = None,
        tracer: Tracer | None = None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.providers = providers
        self.pools = pools
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        # Observers, each None when off: passive provider health (routing/health.py), a span per attempt,
        # failed attempts counted by class (portway.telemetry).
        self.health = health
        self.tracer = tracer
        self.metrics = metrics

    async def run(self, targets: list[Target], payload: dict[str, Any], stream: bool) -> Outcome:
        """A chat request's attempts (the hot path: one small job object per request)."""
        return await self.run_job(targets, ChatJob(payload, stream, self.cfg.stream_idle_timeout))

    async def run_messages(
        self, targets: list[Target], payload: dict[str, Any], messages: dict[str, Any], stream: bool
    ) -> Outcome:
        """A /v1/messages request's attempts: see MessagesJob."""
        job = MessagesJob(payload, stream, self.cfg.stream_idle_timeout, messages)
        return await self.run_job(targets, job)

    async def run_job(self, targets: list[Target], job: ChatJob | MediaJob) -> Outcome:
        now = self.clock()
        run = _Run(now + self.cfg.deadline, now)
        for index in range(len(targets)):
            if run.calls >= self.cfg.max_attempts or run.out_of_time:
                break
            outcome = await self._try_target(targets, index, job, run)
            if outcome is not None:
                return outcome
        raise self._final_error(targets, run)

    async def _try_target(
        self, targets: list[Target], index: int, job: ChatJob | MediaJob, run: _Run
    ) -> Outcome | None:
        target = targets[index]
        provider, pool = self.providers[target.provider], self.pools[target.provider]
        retries = 0
        tried = False
        while run.calls < self.cfg.max_attempts:
            now = self.clock()
            following = self._following(targets, index, run, now)
            timeout = self._budget(run, now, following)
            if timeout <= 0:
                run.out_of_time = True
                return None
            state = pool.acquire(now)
            if state is None:
                if not tried:
                    run.attempts.append(
                        Attempt(target.provider, target.model, None, None, _no_key_reason(pool), "skipped")
                    )
                return None
            tried = True
            if job.stream:
                timeout = min(timeout, self.cfg.first_byte_timeout)
            run.due = now + timeout
            run.calls += 1
            failure = await self._attempt(
                pool, state, target, job(provider, target.model, state.key, timeout), run
            )
            if not isinstance(failure, UpstreamFailure):
                return failure
            if failure.kind is FailureKind.BAD_REQUEST:
                raise UpstreamBadRequest(
                    failure.message,
                    status=failure.status or 400,
                    code=failure.error_code,
                    param=failure.param,
                )
            if run.out_of_time:
                return None
            if failure.kind in _NEXT_KEY:
                continue
            if failure.kind not in _RETRYABLE or retries >= self.cfg.retries_per_target:
                return None
            retries += 1
            if not await self._backoff(retries, run, self._following(targets, index, run, self.clock())):
                return None  # a retry would eat into the share kept for the targets after this one
        return None

    def _following(self, targets: list[Target], index: int, run: _Run, now: float) -> int:
        """How many later targets could still be tried after this attempt (each is kept its share)."""
        room = self.cfg.max_attempts - run.calls - 1
        n = 0
        for i in range(index + 1, len(targets)):
            if n >= room:
                break
            if self.pools[targets[i].provider].has_usable(now):
                n += 1
        return n

    def _budget(self, run: _Run, now: float, following: int) -> float:
        """Seconds the next attempt may take; 0 when too little of the deadline is left to start one."""
        cfg = self.cfg
        left = run.deadline - now
        # Measured from when the previous step was due to end: a timer firing late must not cost the next
        # target its reserved share (it still never runs past the deadline).
        avail = run.deadline - min(now, run.due)
        if left <= 0 or avail < cfg.min_attempt_time - _EPS:
            return 0.0
        share = min(cfg.attempt_timeout, left - cfg.min_attempt_time * following)
        return min(left, max(cfg.min_attempt_time, share))

    async def _attempt(
        self,
        pool: KeyPool,
        state: KeyState,
        target: Target,
        call: Awaitable[Result],
        run: _Run,
    ) -> Outcome | UpstreamFailure:
        if self.tracer is not None:
            call = self.tracer.attempt(call, target.provider, target.model)
        started = self.clock()
        try:
            result = await call
        except UpstreamFailure as failure:
            now = self.clock()
            pool.release(state)
            if failure.kind is FailureKind.TIMEOUT and now >= run.deadline - _DEADLINE_SLACK:
                pool.abandon(state)  # the request ran out of time: no verdict on this target
                run.out_of_time = True
                kind, status, message = "deadline", None, "request deadline exceeded"
            else:
                pool.report(state, failure.kind, now, self._hold_for(failure))
                kind, status, message = failure.kind.value, failure.status, failure.message
            latency_ms = (now - started) * 1000
            # The key's label (groq#2), never the key; no message either: it quotes the upstream.
            log.warning(
                "upstream attempt failed: provider=%s model=%s key=%s status=%s kind=%s after %.0f ms",
                target.provider,
                target.model,
                state.label,
                status if status is not None else "-",
                kind,
                latency_ms,
            )
            run.attempts.append(
                Attempt(target.provider, target.model, state.label, status, message, kind, latency_ms)
            )
            if self.health is not None:
                self.health.observe(
                    target.provider, target.model, state.label, kind, status, latency_ms, message
                )
            if self.metrics is not None:
                self.metrics.upstream_error(target.provider, kind)
            return failure
        except BaseException:
            pool.abandon(state)
            pool.release(state)
            raise
        now = self.clock()
        pool.report(state, None, now, None)
        latency_ms = (now - started) * 1000
        run.attempts.append(Attempt(target.provider, target.model, state.label, 200, "", "ok", latency_ms))
        if self.health is not None:
            self.health.observe(target.provider, target.model, state.label, "ok", 200, latency_ms)
        release = _once(lambda: pool.release(state))
        if not _holds_key(result):
            release()
        return Outcome(result, target, run.attempts, release)

    def _hold_for(self, failure: UpstreamFailure) -> float | None:
        """How long the key is set aside: a 429's cool-down, or a rejected key's time to its re-probe."""
        if failure.kind is FailureKind.RATE_LIMIT:
            return self.cfg.rate_limit_cooldown if failure.retry_after is None else failure.retry_after
        if failure.kind is FailureKind.AUTH:
            return self.cfg.key_recheck_after
        return None

    async def _backoff(self, retry: int, run: _Run, following: int) -> bool:
        """Full jitter: uniform in [0, min(cap, base * 2^retry)], leaving the retry and each later target
        `min_attempt_time`. False if that much is no longer left: the retry is not worth making."""
        now = self.clock()
        keep = self.cfg.min_attempt_time * (following + 1)
        if following and run.deadline - min(now, run.due) - keep < -_EPS:
            return False
        ceiling = min(self.cfg.backoff_max, self.cfg.backoff_base * (2**retry))
        delay = min(self.rand() * ceiling, max(0.0, run.deadline - now - keep))
        if delay > 0:
            run.due = now + delay
            await self.sleep(delay)
        return True

    def _final_error(self, targets: list[Target], run: _Run) -> PortwayError:
        if not targets:
            return UpstreamUnavailable("No enabled provider serves this model (are its API keys set?)")
        attempts = run.attempts
        parts = [
            f"{a.provider}/{a.model}: " + (f"HTTP {a.status}" if a.status else a.error) for a in attempts
        ]
        if run.out_of_time and (not attempts or attempts[-1].kind != "deadline"):
            parts.append("request deadline exceeded")
        summary = "; ".join(parts)
        extra = {"attempts": [a.public() for a in attempts]}
        last = attempts[-1].kind if attempts else "skipped"
        if run.out_of_time or last == FailureKind.TIMEOUT.value:
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
