"""Which limits apply to a caller (`applicable_limits`, the one place that decides it), built from the
LimitSpecs of its key and user and the configured defaults; and how their usage is rendered."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, Protocol

from portway.config import LimitSpecConfig
from portway.limits.counters import LimitUsage
from portway.limits.spec import Limit, LimitKind, LimitSpec


class Caller(Protocol):
    """What limits need to know of a caller (identity's Principal is one)."""

    @property
    def is_admin(self) -> bool: ...
    @property
    def key_id(self) -> str | None: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def key_limits(self) -> LimitSpec | None: ...
    @property
    def user_limits(self) -> LimitSpec | None: ...
    @property
    def allowed_models(self) -> tuple[str, ...] | None: ...


def default_spec(cfg: LimitSpecConfig) -> LimitSpec | None:
    """A configured default (`limits.per_ip`, `limits.per_user`), or None when it sets no limit."""
    return LimitSpec.of(cfg)


@functools.lru_cache(maxsize=16_384)
def _scope_limits(scope: str, spec: LimitSpec) -> tuple[Limit, ...]:
    """Limits for a scope, built (and validated) once per (scope, spec) rather than on every request."""
    return tuple(limits_for(scope, spec))


def applicable_limits(
    caller: Caller, client_ip: str | None, per_ip: LimitSpec | None, per_user: LimitSpec | None
) -> list[Limit]:
    """Every limit that applies to this caller: its IP's, its key's, and its user's own limits or else the
    `per_user` default. The master key (an admin with neither key nor user) has none."""
    if caller.is_admin and caller.key_id is None and caller.user_id is None:
        return []
    found: list[Limit] = []
    if client_ip and per_ip:
        found += _scope_limits(f"ip:{client_ip}", per_ip)
    if caller.key_id and caller.key_limits:
        found += _scope_limits(f"key:{caller.key_id}", caller.key_limits)
    user_limits = caller.user_limits or per_user
    if caller.user_id and user_limits:
        found += _scope_limits(f"user:{caller.user_id}", user_limits)
    return found


def limits_for(scope: str, spec: LimitSpec | None) -> list[Limit]:
    """Limits for ``scope`` ("key:<id>", "user:<id>") in a fixed order: RPM, TPM, daily requests, budget.

    A None field means "no limit of this kind" and produces no Limit; 0 is a real limit (blocks all).
    """
    if spec is None:
        return []
    out: list[Limit] = []
    if spec.rpm is not None:
        out.append(Limit(scope, LimitKind.RPM, spec.rpm))
    if spec.tpm is not None:
        out.append(Limit(scope, LimitKind.TPM, spec.tpm))
    if spec.daily_requests is not None:
        out.append(Limit(scope, LimitKind.DAILY_REQUESTS, spec.daily_requests))
    if spec.budget_usd is not None:
        out.append(Limit(scope, LimitKind.BUDGET, spec.budget_usd, period=spec.budget_period))
    return out


def iso(ts: float | None) -> str | None:
    """Unix seconds → ISO 8601 UTC, the one timestamp format of the admin API."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def usage_json(usage: LimitUsage) -> dict[str, Any]:
    limit = usage.limit
    out: dict[str, Any] = {
        "scope": limit.scope,
        "kind": limit.kind.value,
        "limit": limit.limit,
        "used": usage.used,
        "remaining": usage.remaining,
        "reset_at": iso(usage.reset_at),
    }
    if limit.kind is LimitKind.BUDGET:
        out["period"] = limit.period
    if not usage.known:
        out["unknown"] = True  # the counter store was unreachable: "used" is not real
    return out
