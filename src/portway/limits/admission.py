"""Admission: may this caller use this model, and do its limits (per IP, key, user) have room?

Tokens and cost are reserved from an estimate before the upstream call (prompt ≈ body bytes / 4, answer =
max_tokens or the configured default, priced at the dearest target of the plan) and settled with the real
usage after it, so concurrent requests cannot overshoot a budget by more than what is in flight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from portway.config import LimitsConfig
from portway.errors import ModelNotAllowed
from portway.limits.counters import Counters, LimitPlan, Reservation, raise_for
from portway.limits.policy import Caller, applicable_limits, default_spec
from portway.limits.spec import Limit
from portway.providers.base import Usage
from portway.routing.router import Target
from portway.usage.cost import Pricing, prompt_tokens_estimate


@dataclass(slots=True)
class Ticket:
    """What admission took for one request, to be settled (or released) exactly once."""

    reservation: Reservation | None = None
    headers: dict[str, str] = field(default_factory=dict)


_NO_LIMITS = LimitPlan(())
_MAX_PLANS = 16_384


class Admission:
    def __init__(self, counters: Counters, pricing: Pricing, cfg: LimitsConfig) -> None:
        self.counters = counters
        self.pricing = pricing
        self.default_completion = cfg.default_completion_tokens
        self.per_ip = default_spec(cfg.per_ip)
        self.per_user = default_spec(cfg.per_user)
        # A LimitPlan per (caller, client IP), built once rather than per request. A Caller is a frozen
        # value: one whose key-cache entry was refreshed with the same limits finds the same plan.
        self._plans: dict[tuple[Caller, str | None], LimitPlan] = {}

    def check_models(self, principal: Caller, names: Sequence[str]) -> None:
        allowed = principal.allowed_models
        if allowed is None:
            return
        for name in names:
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
                raise ModelNotAllowed(f"This key may not use the model {name!r}", param="model")

    def limits(self, caller: Caller, client_ip: str | None) -> list[Limit]:
        """Every limit that applies to this caller (also what `/v1/me` shows)."""
        return applicable_limits(caller, client_ip, self.per_ip, self.per_user)

    def _limit_plan(self, caller: Caller, client_ip: str | None) -> LimitPlan:
        key = (caller, client_ip)
        lp = self._plans.get(key)
        if lp is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()  # many IPs or callers: start over rather than grow without bound
            found = self.limits(caller, client_ip)
            lp = self._plans[key] = LimitPlan(found) if found else _NO_LIMITS
        return lp

    def estimate_tokens(self, payload: dict[str, Any], body_bytes: int) -> tuple[int, int]:
        answer = payload.get("max_completion_tokens") or payload.get("max_tokens") or self.default_completion
        return prompt_tokens_estimate(body_bytes), int(answer) * int(payload.get("n") or 1)

    async def admit(
        self,
        principal: Caller,
        client_ip: str | None,
        payload: dict[str, Any],
        body_bytes: int,
        plan: list[Target],
    ) -> Ticket:
        ip = client_ip if self.per_ip else None  # without per-IP limits one plan serves every address
        limits = self._limit_plan(principal, ip)
        if not limits.limits:
            return Ticket()
        prompt, answer = self.estimate_tokens(payload, body_bytes)
        cost = self.pricing.estimate([t.id for t in plan], prompt, answer)
        return await self._take(limits, prompt + answer, cost)

    async def reserve(self, caller: Caller, client_ip: str | None, *, tokens: int, cost: float) -> Ticket:
        """Reserve an estimate the caller worked out itself (media requests) against the same limits."""
        limits = self._limit_plan(caller, client_ip if self.per_ip else None)
        if not limits.limits:
            return Ticket()
        return await self._take(limits, tokens, cost)

    async def _take(self, limits: LimitPlan, tokens: int, cost: float) -> Ticket:
        decision = await self.counters.admit(limits, tokens=tokens, cost=cost)
        raise_for(decision)
        return Ticket(decision.reservation, decision.headers)

    def cost(self, target: Target, usage: Usage) -> float:
        return self.pricing.usage_cost(target.id, usage)  # cached and reasoning tokens at their prices

    def prompt_spent(self, plan: Sequence[Target], body_bytes: int) -> tuple[Usage, float]:
        """What a request that was cancelled during its upstream call may have been billed: its prompt,
        priced as it was reserved (at the dearest target of the plan: which attempt was running is the
        attempt loop's business)."""
        usage = Usage(prompt_tokens_estimate(body_bytes), 0)
        return usage, self.pricing.estimate([t.id for t in plan], usage.prompt_tokens, 0)

    async def settle(self, ticket: Ticket, usage: Usage | None, cost: float) -> None:
        """Swap the estimate for the usage spent, or give it back when no upstream was called (None)."""
        reservation, ticket.reservation = ticket.reservation, None
        if reservation is None:
            return
        if usage is None:
            await self.counters.release(reservation)
        else:
            await self.counters.settle(reservation, tokens=usage.total_tokens, cost=cost)
