"""Usage analytics on a million request-log rows: the time of the main queries, on SQLite and Postgres.

    .venv/bin/python -m bench.analytics [--rows 1000000] [--postgres postgresql://postgres@127.0.0.1/test]

Seeds a fresh database through the gateway's own sink (`Database.write_usage`, migrations applied, so
the indexes are the shipped ones) with 30 days of traffic (200 keys, a quarter of them a user's, 12 models
on 4 providers, 30 % streams, 3 % errors, log-normal latencies), then runs each query through
`UsageService.report` (SQL and the Python that shapes the answer) three times and prints the median.
The figures go into docs/performance.md ("Usage analytics").
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from portway.services.usage import UsageParams, UsageService
from portway.stores.sql.analytics import UsageAnalytics
from portway.stores.sql.database import Database
from portway.stores.sql.identity import api_keys, users
from portway.usage.records import UsageRecord

DAYS = 30
KEYS = 200
BATCH = 5000


def _records(start: int, count: int, n: int, now: float, rng: random.Random) -> list[UsageRecord]:
    """Rows start..start+count of n, spread evenly over the last DAYS days in time order (as written)."""
    models = [f"model-{i}" for i in range(12)]
    out = []
    for i in range(start, start + count):
        stream = rng.random() < 0.3
        latency = rng.lognormvariate(6.0, 0.8)
        out.append(
            UsageRecord(
                ts=now - DAYS * 86400 * (1 - i / n),
                request_id=f"{i:016x}",
                principal=f"key:k{rng.randrange(KEYS):04d}",
                requested_model="fast",
                provider=f"prov-{rng.randrange(4)}",
                served_model=rng.choice(models),
                status=200 if rng.random() < 0.97 else rng.choice((429, 500, 502)),
                latency_ms=latency,
                prompt_tokens=rng.randrange(10, 2000),
                completion_tokens=rng.randrange(1, 800),
                stream=stream,
                cost_usd=rng.random() / 1000,
                ttft_ms=latency * rng.uniform(0.05, 0.4) if stream else 0.0,
            )
        )
    return out


async def _seed(db: Database, n: int, now: float) -> float:
    rng = random.Random(7)
    async with db.engine.begin() as conn:  # a quarter of the keys belong to users (group_by=user joins them)
        await conn.execute(
            users.insert(), [{"id": "u1", "email": "u1@example.com", "created_at": 0.0, "updated_at": 0.0}]
        )
        keys = [
            {
                "id": f"k{i:04d}",
                "name": "",
                "key_hash": secrets.token_hex(16),
                "display_prefix": "sk-pw-x",
                "user_id": "u1" if i % 4 == 0 else None,
                "created_at": 0.0,
            }
            for i in range(KEYS)
        ]
        await conn.execute(api_keys.insert(), keys)
    started = time.perf_counter()
    done = 0
    while done < n:
        batch = _records(done, min(BATCH, n - done), n, now, rng)
        await db.write_usage(batch)
        done += len(batch)
    return time.perf_counter() - started


QUERIES: list[tuple[str, UsageParams, bool]] = [
    ("totals, 30 days", UsageParams(since="30d"), False),
    ("group_by=day, 30 days", UsageParams(since="30d", group_by="day"), False),
    ("group_by=hour, 7 days", UsageParams(since="7d", group_by="hour"), False),
    ("group_by=model, 30 days", UsageParams(since="30d", group_by="model"), False),
    ("group_by=key, 30 days", UsageParams(since="30d", group_by="key"), False),
    ("group_by=user, 30 days", UsageParams(since="30d", group_by="user"), False),
    ("totals, 24 h", UsageParams(since="24h"), False),
    ("model filter, 24 h, group_by=hour", UsageParams(since="24h", model="model-3", group_by="hour"), False),
    ("one key, 30 days, group_by=day", UsageParams(since="30d", key="k0042", group_by="day"), False),
    ("rows page (100), one key", UsageParams(since="30d", key="k0042"), True),
]


async def _median(fn: Callable[[], Awaitable[Any]], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def run(url: str, n: int) -> dict[str, float]:
    db = Database(url)
    await db.migrate()
    now = time.time()
    seeded = await _seed(db, n, now)
    print(f"  seeded {n:,} rows in {seeded:.1f} s")
    if db.engine.dialect.name == "postgresql":
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("ANALYZE request_log"))
    service = UsageService(UsageAnalytics(db.engine))
    figures: dict[str, float] = {}
    for name, params, rows in QUERIES:

        async def once(p: UsageParams = params, rows: bool = rows) -> None:
            flt, _ = await service.report(p, None)
            if rows:
                await service.rows(flt, 100, 0)

        figures[name] = await _median(once)
        print(f"  {name:<40} {figures[name] * 1000:8.0f} ms")
    await db.aclose()
    return figures


async def _pg_admin(server: str, sql: str) -> None:
    import asyncpg

    con = await asyncpg.connect(server)
    try:
        await con.execute(sql)
    finally:
        await con.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite")
        await run(f"sqlite+aiosqlite:///{Path(tmp) / 'portway.db'}", args.rows)
    if args.no_postgres:
        return
    name = "portway_bench_" + secrets.token_hex(4)
    await _pg_admin(args.postgres, f"CREATE DATABASE {name}")
    try:
        print("Postgres")
        url = urlsplit(args.postgres)._replace(scheme="postgresql+asyncpg", path="/" + name).geturl()
        await run(url, args.rows)
    finally:
        await _pg_admin(args.postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    asyncio.run(main())
