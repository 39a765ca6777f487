"""Usage analytics: aggregates and pages of the request log (SQLAlchemy Core, async, read-only).

Percentiles are where the two databases differ. Postgres computes them exactly (`percentile_cont`, one
query, `ROLLUP` for the totals). SQLite has no percentile function, and sorting a million latencies per
group (window functions) costs about three times a plain aggregate, so SQLite groups each group's rows
into log-scale latency buckets instead: `CAST(ln(1 + ms) * 50 AS INTEGER)`, each bucket ~2 % wide, with
the count, min and max of every bucket. The percentile is then read off the cumulative counts the way
`percentile_cont` reads a sorted list (linear between the two neighbouring ranks), each value placed
linearly between its bucket's min and max: exact for buckets holding one or two distinct values, and never
more than one bucket's width (~2 %) off. The same scan gives the sums (a group's buckets add up), and
bucket histograms merge, so the totals cost no extra query (and `group_by=user` groups by principal and
maps keys to their users in Python instead of a per-row join). TTFT takes a second scan (streams only).
SQLite needs its math functions (`ln`, built in since 3.35).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.identity import api_keys
from portway.stores.sql.tables import request_log

GROUPS = ("hour", "day", "model", "provider", "key", "user")
BUCKETS_PER_E = 50  # log-bucket resolution on SQLite: exp(1/50) - 1 = 2.0 % per bucket

_c = request_log.c
ROW_COLUMNS = (
    "id",
    "ts",
    "request_id",
    "principal",
    "endpoint",
    "requested_model",
    "provider",
    "served_model",
    "status",
    "error_code",
    "stream",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "usage_estimated",
    "cache_hit",
)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which request-log rows count: [since, until) in unix seconds and optional exact matches.

    `principal` and `owner` scope a caller to its own rows (a key: its principal; a user: its own principal
    and its keys'); `key`/`user` are the admin's filters by key id and user id (a user's keys included).
    """

    since: float
    until: float
    principal: str | None = None
    owner: str | None = None
    key: str | None = None
    user: str | None = None
    model: str | None = None  # the model asked for or the one that answered
    provider: str | None = None
    endpoint: str | None = None
    status_min: int | None = None
    status_max: int | None = None


@dataclass(slots=True)
class Stats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None


_Bucket = tuple[int, int, float, float]  # (bucket number, rows, min, max)


def _user_of_key() -> sa.ColumnElement[bool]:
    return sa.and_(_c.principal.like("key:%"), api_keys.c.id == sa.func.substr(_c.principal, 5))


def _users_principals(user_id: str) -> sa.ColumnElement[bool]:
    """The user's own principal and those of the keys it owns."""
    keys = sa.select(sa.literal("key:") + api_keys.c.id).where(api_keys.c.user_id == user_id)
    return sa.or_(_c.principal == "user:" + user_id, _c.principal.in_(keys.scalar_subquery()))


def conditions(f: UsageFilter) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [_c.ts >= f.since, _c.ts < f.until]
    if f.principal is not None:
        where.append(_c.principal == f.principal)
    if f.owner is not None:
        where.append(_users_principals(f.owner))
    if f.key is not None:
        where.append(_c.principal == "key:" + f.key)
    if f.user is not None:
        where.append(_users_principals(f.user))
    if f.model is not None:
        where.append(sa.or_(_c.requested_model == f.model, _c.served_model == f.model))
    if f.provider is not None:
        where.append(_c.provider == f.provider)
    if f.endpoint is not None:
        where.append(_c.endpoint == f.endpoint)
    if f.status_min is not None:
        where.append(_c.status >= f.status_min)
    if f.status_max is not None:
        where.append(_c.status <= f.status_max)
    return where


def percentile(buckets: Sequence[_Bucket], p: float) -> float | None:
    """`percentile_cont(p)` over the values the (sorted) buckets hold; see the module docstring."""
    n = sum(b[1] for b in buckets)
    if n == 0:
        return None
    rank = p * (n - 1)
    lo, frac = int(rank), rank - int(rank)
    below = _value_at(buckets, lo)
    if frac == 0.0 or lo + 1 >= n:
        return below
    return below + frac * (_value_at(buckets, lo + 1) - below)


def _value_at(buckets: Sequence[_Bucket], index: int) -> float:
    seen = 0
    for _, count, low, high in buckets:
        if index < seen + count:
            if count == 1:
                return low
            return low + (high - low) * (index - seen) / (count - 1)
        seen += count
    return buckets[-1][3]


# What the Postgres subquery hands up besides the group key.
_PG_INNER: tuple[str, ...] = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "status")
_PG_INNER += ("latency_ms", "ttft_ms", "stream")


class UsageAnalytics:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    # -- group keys

    def _group_key(self, group_by: str) -> sa.ColumnElement[Any]:
        if group_by in ("hour", "day"):
            width = 3600 if group_by == "hour" else 86400
            if self.sqlite:
                return sa.cast(_c.ts / width, sa.Integer)  # truncates (ts > 0); Postgres' cast rounds
            return sa.cast(sa.func.floor(_c.ts / width), sa.BigInteger)
        if group_by == "model":
            return sa.func.coalesce(_c.served_model, _c.requested_model)
        if group_by == "provider":
            return _c.provider
        if group_by == "key":
            return sa.case((_c.principal.like("key:%"), sa.func.substr(_c.principal, 5)))
        if group_by == "user":
            return sa.case(
                (_c.principal.like("user:%"), sa.func.substr(_c.principal, 6)), else_=api_keys.c.user_id
            )
        raise ValueError(group_by)

    def _source(self, group_by: str | None) -> sa.FromClause:
        if group_by == "user":
            return request_log.outerjoin(api_keys, _user_of_key())
        return request_log

    # -- aggregates

    async def aggregate(self, f: UsageFilter, group_by: str | None) -> tuple[Stats, list[tuple[Any, Stats]]]:
        """(totals, [(group key, stats)]) for the rows `f` selects; no groups without `group_by`."""
        if self.sqlite:
            return await self._aggregate_sqlite(f, group_by)
        return await self._aggregate_postgres(f, group_by)

    async def _aggregate_postgres(
        self, f: UsageFilter, group_by: str | None
    ) -> tuple[Stats, list[tuple[Any, Stats]]]:
        # The group key is worked out in a subquery: GROUP BY ROLLUP over an expression with bound
        # parameters would not match the same expression in the SELECT list.
        key: sa.ColumnElement[Any] = sa.literal(None) if group_by is None else self._group_key(group_by)
        inner = (
            sa.select(key.label("g"), *(_c[n] for n in _PG_INNER))
            .select_from(self._source(group_by))
            .where(*conditions(f))
            .subquery()
        )
        i = inner.c
        ttft = sa.case((sa.and_(i.stream, i.ttft_ms > 0), i.ttft_ms))  # percentile_cont skips NULLs
        measures: list[sa.ColumnElement[Any]] = [
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(i.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(i.completion_tokens), 0),
            sa.func.coalesce(sa.func.sum(i.total_tokens), 0),
            sa.func.coalesce(sa.func.sum(i.cost_usd), 0.0),
            sa.func.count().filter(i.status >= 400),
            sa.func.percentile_cont(0.5).within_group(i.latency_ms),
            sa.func.percentile_cont(0.95).within_group(i.latency_ms),
            sa.func.percentile_cont(0.5).within_group(ttft),
            sa.func.percentile_cont(0.95).within_group(ttft),
        ]
        if group_by is None:
            async with self.engine.connect() as conn:
                row = (await conn.execute(sa.select(*measures))).one()
            return _pg_stats(row), []
        stmt = sa.select(sa.func.grouping(i.g), i.g, *measures).group_by(sa.func.rollup(i.g))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        totals, groups = Stats(), []
        for row in rows:
            if row[0]:  # the ROLLUP's grand total
                totals = _pg_stats(row[2:])
            else:
                groups.append((row[1], _pg_stats(row[2:])))
        return totals, groups

    async def _aggregate_sqlite(
        self, f: UsageFilter, group_by: str | None
    ) -> tuple[Stats, list[tuple[Any, Stats]]]:
        # By user: grouped by principal here and mapped to users below (histograms merge), which is
        # cheaper than SQLite's per-row lookup of a join.
        by_principal = group_by == "user"
        key: sa.ColumnElement[Any] = sa.literal(None)
        if group_by is not None:
            key = _c.principal if by_principal else self._group_key(group_by)
        source, where = request_log, conditions(f)

        def bucket(col: sa.ColumnElement[float]) -> sa.ColumnElement[int]:
            return sa.cast(sa.func.ln(col + 1) * BUCKETS_PER_E, sa.Integer)

        lat_b = bucket(sa.func.max(_c.latency_ms, 0.0)).label("b")  # SQLite's 2-argument max is scalar
        main = (
            sa.select(
                key.label("g"),
                lat_b,
                sa.func.count(),
                sa.func.sum(_c.prompt_tokens),
                sa.func.sum(_c.completion_tokens),
                sa.func.sum(_c.total_tokens),
                sa.func.sum(_c.cost_usd),
                sa.func.sum(sa.case((_c.status >= 400, 1), else_=0)),
                sa.func.min(_c.latency_ms),
                sa.func.max(_c.latency_ms),
            )
            .select_from(source)
            .where(*where)
            .group_by(sa.text("g"), sa.text("b"))
        )
        ttft_b = bucket(_c.ttft_ms).label("b")
        ttft = (
            sa.select(
                key.label("g"), ttft_b, sa.func.count(), sa.func.min(_c.ttft_ms), sa.func.max(_c.ttft_ms)
            )
            .select_from(source)
            .where(*where, _c.stream, _c.ttft_ms > 0)
            .group_by(sa.text("g"), sa.text("b"))
        )
        async with self.engine.connect() as conn:
            main_rows: Sequence[Sequence[Any]] = (await conn.execute(main)).all()
            ttft_rows: Sequence[Sequence[Any]] = (await conn.execute(ttft)).all()
            if by_principal:
                owners = await conn.execute(
                    sa.select(api_keys.c.id, api_keys.c.user_id).where(api_keys.c.user_id.is_not(None))
                )
                users = {f"key:{key_id}": user_id for key_id, user_id in owners}
                main_rows = [(_user_of(r[0], users), *r[1:]) for r in main_rows]
                ttft_rows = [(_user_of(r[0], users), *r[1:]) for r in ttft_rows]
        return _merge_buckets(main_rows, ttft_rows, grouped=group_by is not None)

    # -- rows

    def _rows_stmt(self, f: UsageFilter, limit: int, offset: int) -> sa.Select[Any]:
        cols = [_c[name] for name in ROW_COLUMNS]
        return (
            sa.select(*cols)
            .where(*conditions(f))
            .order_by(_c.ts.desc(), _c.id.desc())
            .limit(limit)
            .offset(offset)
        )

    async def rows(self, f: UsageFilter, limit: int, offset: int) -> list[dict[str, Any]]:
        """A page of the rows, newest first."""
        async with self.engine.connect() as conn:
            result = await conn.execute(self._rows_stmt(f, limit, offset))
            return [dict(zip(ROW_COLUMNS, row, strict=True)) for row in result]

    async def stream_rows(self, f: UsageFilter, limit: int, offset: int) -> AsyncIterator[dict[str, Any]]:
        """The same rows, fetched in chunks (an export of many rows never sits in memory at once)."""
        async with self.engine.connect() as conn:
            result = await conn.stream(self._rows_stmt(f, limit, offset).execution_options(yield_per=1000))
            async for row in result:
                yield dict(zip(ROW_COLUMNS, row, strict=True))


def _user_of(principal: str, users: dict[str, str]) -> str | None:
    """The user a principal acts for: `user:<id>` itself, a key its owner, else None."""
    if principal.startswith("user:"):
        return principal[5:]
    return users.get(principal)


def _pg_stats(row: Sequence[Any]) -> Stats:
    n, pt, ct, tt, cost, errors, l50, l95, t50, t95 = row
    return Stats(int(n), int(pt), int(ct), int(tt), float(cost), int(errors), l50, l95, t50, t95)


def _merge_buckets(
    main_rows: Iterable[Sequence[Any]], ttft_rows: Iterable[Sequence[Any]], *, grouped: bool
) -> tuple[Stats, list[tuple[Any, Stats]]]:
    """Each group's stats from its bucket rows; the totals from all of them (histograms add up)."""
    latency: dict[Any, list[Sequence[Any]]] = {}
    ttft: dict[Any, list[Sequence[Any]]] = {}
    for row in main_rows:
        latency.setdefault(row[0], []).append(row)
    for row in ttft_rows:
        ttft.setdefault(row[0], []).append(row)
    every_lat = [r for rows in latency.values() for r in rows]
    every_ttft = [r for rows in ttft.values() for r in rows]
    totals = _stats(every_lat, every_ttft)
    if not grouped:
        return totals, []
    return totals, [(g, _stats(rows, ttft.get(g, []))) for g, rows in latency.items()]


def _stats(main: Sequence[Sequence[Any]], ttft: Sequence[Sequence[Any]]) -> Stats:
    """One group from (g, bucket, n, prompt, completion, total, cost, errors, min, max) rows and the
    (g, bucket, n, min, max) rows of its streams."""
    _, _, n, pt, ct, tt, cost, errors, _, _ = zip(*main, strict=True) if main else ((),) * 10
    latency = _collapse([(r[1], r[2], r[8], r[9]) for r in main])
    first = _collapse([(r[1], r[2], r[3], r[4]) for r in ttft])
    return Stats(
        requests=sum(n),
        prompt_tokens=sum(x or 0 for x in pt),
        completion_tokens=sum(x or 0 for x in ct),
        total_tokens=sum(x or 0 for x in tt),
        cost_usd=sum(x or 0.0 for x in cost),
        errors=sum(x or 0 for x in errors),
        latency_ms_p50=percentile(latency, 0.5),
        latency_ms_p95=percentile(latency, 0.95),
        ttft_ms_p50=percentile(first, 0.5),
        ttft_ms_p95=percentile(first, 0.95),
    )


def _collapse(buckets: list[_Bucket]) -> list[_Bucket]:
    """Sorted, one entry per bucket: the totals gather each bucket once per group that has it."""
    out: list[_Bucket] = []
    for b in sorted(buckets):
        if out and out[-1][0] == b[0]:
            prev = out[-1]
            out[-1] = (b[0], prev[1] + b[1], min(prev[2], b[2]), max(prev[3], b[3]))
        else:
            out.append(b)
    return out
