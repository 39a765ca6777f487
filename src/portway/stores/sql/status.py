"""Provider status history (table provider_status): one row per provider per check slot, for uptime.

A slot is the start (unix seconds) of one check interval. The primary key (provider, slot) makes the
first worker's row the slot's row: several workers (or replicas) writing the same slot do not double it,
and a worker finds out with `taken()` that another one already checked, and skips its own probe.
Uptime over a window is the share of its rows whose status is not "down" (degraded still serves).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.database import insert_ignoring_conflicts
from portway.stores.sql.tables import metadata

provider_status = sa.Table(
    "provider_status",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("slot", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # up | degraded | down
    sa.Column("source", sa.String(16), nullable=False),  # probe | traffic
    sa.Column("latency_ms", sa.Float),
    sa.Index("ix_provider_status_ts", "ts"),
)
_c = provider_status.c

# The uptime windows GET /v1/status reports, in seconds.
WINDOWS: dict[str, float] = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


@dataclass(slots=True, frozen=True)
class Check:
    provider: str
    slot: int
    ts: float
    status: str
    source: str
    latency_ms: float | None = None


@dataclass(slots=True, frozen=True)
class Uptime:
    percent: dict[str, float | None]  # window name -> % of checks not "down" (None: no check in it)
    last_checked: float | None  # unix seconds of the latest check


class StatusStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def _insert(self) -> sa.Insert:
        return insert_ignoring_conflicts(self.engine.dialect.name, provider_status)

    async def record(self, checks: Sequence[Check]) -> None:
        """Insert checks; a slot another worker already wrote keeps its row."""
        if not checks:
            return
        rows = [
            {
                "provider": c.provider,
                "slot": c.slot,
                "ts": c.ts,
                "status": c.status,
                "source": c.source,
                "latency_ms": c.latency_ms,
            }
            for c in checks
        ]
        async with self.engine.begin() as conn:
            await conn.execute(self._insert(), rows)

    async def taken(self, slot: int, providers: Iterable[str]) -> set[str]:
        """Which of `providers` already have a row for `slot`."""
        names = list(providers)
        if not names:
            return set()
        query = sa.select(_c.provider).where(_c.slot == slot, _c.provider.in_(names))
        async with self.engine.connect() as conn:
            return {row[0] for row in await conn.execute(query)}

    async def uptime(self, now: float) -> dict[str, Uptime]:
        """Each provider's uptime over WINDOWS, in one query over the longest window."""
        columns: list[sa.ColumnElement[Any]] = [_c.provider, sa.func.max(_c.ts)]
        for seconds in WINDOWS.values():
            recent = _c.ts >= now - seconds
            columns.append(sa.func.sum(sa.case((recent, 1), else_=0)))
            columns.append(sa.func.sum(sa.case((sa.and_(recent, _c.status != "down"), 1), else_=0)))
        longest = max(WINDOWS.values())
        query = sa.select(*columns).where(_c.ts >= now - longest).group_by(_c.provider)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[str, Uptime] = {}
        for row in rows:
            percent: dict[str, float | None] = {}
            for i, name in enumerate(WINDOWS):
                total, up = int(row[2 + 2 * i] or 0), int(row[3 + 2 * i] or 0)
                percent[name] = round(100.0 * up / total, 2) if total else None
            out[row[0]] = Uptime(percent, float(row[1]) if row[1] is not None else None)
        return out

    async def prune(self, before: float) -> int:
        """Delete checks older than `before` (unix seconds); how many went."""
        async with self.engine.begin() as conn:
            result = await conn.execute(provider_status.delete().where(_c.ts < before))
        return int(result.rowcount or 0)
