"""The request-log sink writes every field of every record exactly, on SQLite and on Postgres."""

from __future__ import annotations

from dataclasses import astuple, fields
from pathlib import Path

import sqlalchemy as sa

from portway.stores.sql.database import Database
from portway.stores.sql.tables import request_log
from portway.usage.records import UsageRecord

RECORDS = [
    UsageRecord(
        1763900000.123456,
        "r1",
        "key:abc",
        "fast",
        "groq",
        "llama-3.1-8b",
        200,
        12.5,
        10,
        20,
        True,
        2,
        None,
        0.000123,
    ),
    UsageRecord(
        1763900001.5,
        "r2",
        "master",
        "ünïcödé \"quoted\" 'x'",
        None,
        None,
        503,
        0.25,
        0,
        0,
        False,
        0,
        "upstream_unavailable",
        0.0,
    ),
]


async def _roundtrip(url: str) -> list[tuple[object, ...]]:
    db = Database(url)
    try:
        await db.migrate()
        await db.write_usage(RECORDS)
        columns = [request_log.c[f.name] for f in fields(UsageRecord)] + [request_log.c.total_tokens]
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(*columns).order_by(request_log.c.id))).all()
    finally:
        await db.aclose()
    return [tuple(r) for r in rows]


def _expected() -> list[tuple[object, ...]]:
    return [(*astuple(r), r.prompt_tokens + r.completion_tokens) for r in RECORDS]


async def test_sqlite_sink_writes_every_field(tmp_path: Path) -> None:
    assert await _roundtrip(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}") == _expected()


async def test_postgres_sink_writes_every_field(pg_url: str) -> None:
    assert await _roundtrip(pg_url) == _expected()


async def test_sqlite_sink_writes_batches_of_every_size_exactly(tmp_path: Path) -> None:
    """Rows go to SQLite several to a statement: full statements, a remainder, and both, all land once."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        await db.migrate()
        written: list[UsageRecord] = []
        for size in (1, 32, 69, 200):
            batch = [
                UsageRecord(
                    float(len(written) + i), f"r{len(written) + i}", "master", "m", "p", "m", 200, 1.5, i
                )
                for i in range(size)
            ]
            await db.write_usage(batch)
            written += batch
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(request_log.c.request_id, request_log.c.prompt_tokens).order_by(
                        request_log.c.id
                    )
                )
            ).all()
    finally:
        await db.aclose()
    assert [tuple(r) for r in rows] == [(r.request_id, r.prompt_tokens) for r in written]
