"""Turn the limits stored on keys and users (LimitSpec) into admission Limits, and render their usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from portway.gateway.limits import Limit, LimitKind, LimitUsage
from portway.services.auth import LimitSpec


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


def own_limits(
    rpm: int | None, tpm: int | None, daily: int | None, budget_usd: float | None, period: str
) -> LimitSpec | None:
    """The limits stored on a key or user, or None when it has none of its own.

    None matters: it is what lets ``limits.per_user`` stand in for a user without limits (a LimitSpec of
    all-None fields is truthy, and used to hide the default).
    """
    if rpm is None and tpm is None and daily is None and budget_usd is None:
        return None
    return LimitSpec(rpm, tpm, daily, budget_usd, period)


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
