"""One bad record no longer stops all recording: records are sanitized, a refused row is dropped and counted,
the rest lands, and /ready shows the writer (503 once writes have failed longer than the window)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from portway.stores.sql.database import Database
from portway.stores.sql.tables import request_log
from portway.usage.records import UsageRecord
from portway.usage.writer import UsageWriter
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
POISON = "x" * 150 + "\x00" + "y" * 150  # 301 characters with a NUL byte: Postgres refused both
MSGS = [{"role": "user", "content": "hi"}]


def rec(i: int, model: str = "m", status: int = 200) -> UsageRecord:
    return UsageRecord(float(i), f"r{i}", "master", model, "up", model, status, 1.0, 1, 2)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def _rows(db: Database) -> list[tuple[Any, ...]]:
    cols = (request_log.c.request_id, request_log.c.requested_model, request_log.c.served_model)
    async with db.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(sa.select(*cols).order_by(request_log.c.id))).all()]


async def test_a_poison_record_lands_sanitized_beside_the_good_ones(db_url: str) -> None:
    db = Database(db_url)
    await db.migrate()
    writer = UsageWriter(db, batch_size=50, interval=0.01)
    writer.start()
    try:
        for i in range(20):
            writer.submit(rec(i, POISON if i == 9 else "m"))
        await writer.aclose(timeout=3)  # the old writer retried the batch here until the deadline
        rows = await _rows(db)
    finally:
        await db.aclose()
    clean = POISON.replace("\x00", "")[:256]
    assert rows == [(f"r{i}", clean if i == 9 else "m", clean if i == 9 else "m") for i in range(20)]
    assert writer.dropped == 0


async def _reject_status_599(db: Database) -> None:
    """A rule sanitizing cannot satisfy: the database itself refuses one value."""
    if db.engine.dialect.name == "sqlite":
        ddl = (
            "CREATE TRIGGER no_599 BEFORE INSERT ON request_log WHEN NEW.status = 599 "
            "BEGIN SELECT RAISE(ABORT, 'status 599 refused'); END"
        )
    else:
        ddl = "ALTER TABLE request_log ADD CONSTRAINT no_599 CHECK (status <> 599)"
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(ddl)


async def test_a_row_the_database_refuses_is_dropped_and_the_writer_goes_on(db_url: str) -> None:
    db = Database(db_url)
    await db.migrate()
    await _reject_status_599(db)
    writer = UsageWriter(db, batch_size=50, interval=0.01)
    writer.start()
    try:
        for i in range(10):
            writer.submit(rec(i, status=599 if i == 4 else 200))
        async with asyncio.timeout(5):
            while writer.written < 9:  # noqa: ASYNC110  (polls the writer's counter)
                await asyncio.sleep(0.01)
        writer.submit(rec(10))  # later records are written too
        await writer.aclose(timeout=3)
        rows = await _rows(db)
    finally:
        await db.aclose()
    assert [r[0] for r in rows] == [f"r{i}" for i in range(11) if i != 4]
    assert (writer.dropped, writer.rejected) == (1, 1)
    assert writer.last_error and "599" not in writer.last_error.split(":")[0]


def _poll(check: Callable[[], bool], timeout: float = 10.0) -> None:
    until = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < until, "condition not met in time"
        time.sleep(0.05)


def _ready(gw: PortwayProcess) -> httpx.Response:
    return HTTP.get(gw.url + "/ready", timeout=5)


def _pg(url: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        con = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return list(await con.fetch(sql))
        finally:
            await con.close()

    return asyncio.run(run())


def test_a_running_gateway_records_after_a_poison_request(
    upstream: FakeUpstream,
    tmp_path: Path,
    pg_url: str,
) -> None:
    cfg = gateway_config(upstream)
    cfg["models"]["long"] = ["up/" + "z" * 300]  # an upstream answering with a 300-character model
    gw = PortwayProcess(tmp_path, cfg, env={"PORTWAY_DATABASE_URL": pg_url})
    try:
        chat = gw.base_url + "/chat/completions"
        bad = HTTP.post(chat, json={"model": POISON, "messages": MSGS}, headers=gw.headers())
        assert bad.status_code == 404, bad.text
        assert (
            HTTP.post(chat, json={"model": "long", "messages": MSGS}, headers=gw.headers()).status_code == 200
        )
        for _ in range(3):
            ok = HTTP.post(chat, json={"model": "direct", "messages": MSGS}, headers=gw.headers())
            assert ok.status_code == 200
        _poll(lambda: _ready(gw).json()["usage_writer"]["written"] == 5)
        ready = _ready(gw)
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "usage_writer": "ok"}
        assert ready.json()["usage_writer"]["dropped"] == 0
    finally:
        gw.stop()
    rows = _pg(pg_url, "SELECT requested_model, served_model, status FROM request_log ORDER BY id")
    assert [(r["requested_model"], r["status"]) for r in rows] == [
        (POISON.replace("\x00", "")[:256], 404),
        ("long", 200),
        *[("direct", 200)] * 3,
    ]
    assert rows[1]["served_model"] == "z" * 256


def test_ready_fails_while_writes_fail_past_the_window_and_recovers(
    upstream: FakeUpstream,
    tmp_path: Path,
    pg_url: str,
) -> None:
    cfg = gateway_config(upstream)
    cfg["server"]["ready_write_failure_seconds"] = 0.3
    gw = PortwayProcess(tmp_path, cfg, env={"PORTWAY_DATABASE_URL": pg_url})
    chat = gw.base_url + "/chat/completions"
    try:
        assert (
            HTTP.post(chat, json={"model": "direct", "messages": MSGS}, headers=gw.headers()).status_code
            == 200
        )
        _poll(lambda: _ready(gw).json()["usage_writer"]["written"] == 1)
        time.sleep(0.4)  # idle for longer than the window: still ready
        assert _ready(gw).status_code == 200
        _pg(pg_url, "ALTER TABLE request_log RENAME TO request_log_away")  # writes now fail, pings do not
        assert (
            HTTP.post(chat, json={"model": "direct", "messages": MSGS}, headers=gw.headers()).status_code
            == 200
        )
        _poll(lambda: _ready(gw).status_code == 503)
        body = _ready(gw).json()
        assert body["ready"] is False and body["checks"] == {"database": "ok", "usage_writer": "failing"}
        writer = body["usage_writer"]
        assert writer["backlog"] == 1 and writer["failing_seconds"] > 0.3
        assert "UndefinedTable" in writer["last_error"] and "INSERT" not in writer["last_error"]
        _pg(pg_url, "ALTER TABLE request_log_away RENAME TO request_log")
        _poll(lambda: _ready(gw).status_code == 200)
        assert _ready(gw).json()["usage_writer"]["backlog"] == 0
    finally:
        gw.stop()
    assert len(_pg(pg_url, "SELECT id FROM request_log")) == 2  # the held record was kept, not lost
