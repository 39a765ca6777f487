"""Engine creation, migrations at start, readiness probe, and the request-log sink."""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import stat
from dataclasses import fields
from itertools import chain
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from portway.stores.sql.tables import SCHEMA_REVISION, request_log
from portway.usage.records import INT_MAX, UsageRecord

log = logging.getLogger("portway.db")

_FIELDS = tuple(f.name for f in fields(UsageRecord))
_row = operator.attrgetter(*_FIELDS)  # a record's values as a tuple, in column order, in one C call
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers and the batched writer (and several workers) share the file without blocking.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database or a `file:` URI."""
    u = make_url(url)
    name = u.database
    if not name or name == ":memory:" or name.startswith("file:") or u.query.get("uri"):
        return None
    return Path(name)


def _only_portway_files(folder: Path, db: Path) -> bool:
    ours = {db.name + suffix for suffix in _SQLITE_SUFFIXES}
    return all(n in ours or n.endswith(".key") for n in os.listdir(folder))  # the generated secrets


def _private_sqlite(db: Path) -> None:
    """Password hashes, key HMACs and the request log: the files 0600, the data dir 0700.

    SQLite creates -wal and -shm with the main file's mode, so the main file is made (empty, which SQLite
    takes as a new database) 0600 before SQLite opens it; files an older portway made 0644 are tightened.
    A directory is tightened only while it holds nothing but portway's files (it may be the working dir).
    """
    folder = db.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if stat.S_IMODE(folder.stat().st_mode) & 0o077:
            if _only_portway_files(folder, db):
                os.chmod(folder, 0o700)
            else:
                log.warning("%s is readable by other users; keep the database in a private directory", folder)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for suffix in _SQLITE_SUFFIXES:
            path = db.with_name(db.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(path.stat().st_mode) & 0o077:
                    os.chmod(path, 0o600)
    except PermissionError as exc:  # not ours to change: say so, and let SQLite open what it can
        log.warning("cannot make the SQLite database private: %s", exc)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        db = _sqlite_file(url)
        if db is not None:
            _private_sqlite(db)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _upgrade(connection: sa.Connection) -> None:
    # Alembic's INFO lines (a plugin list on import, "Context impl SQLiteImpl.", one per revision) say
    # nothing an operator needs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command  # imported only when there is something to migrate: ~12 MB per worker
    from alembic.config import Config

    cfg = Config()  # no ini file: Alembic leaves logging as it is
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Apply Alembic migrations up to head (a no-op when already there)."""
    if await schema_revision(engine) == SCHEMA_REVISION:
        return
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _insert_sql(paramstyle: str) -> str:
    columns = [*_FIELDS, "total_tokens"]
    if paramstyle == "qmark":
        marks = ["?"] * len(columns)
    elif paramstyle in ("numeric_dollar", "numeric"):
        prefix = "$" if paramstyle == "numeric_dollar" else ":"
        marks = [f"{prefix}{i}" for i in range(1, len(columns) + 1)]
    elif paramstyle == "format":
        marks = ["%s"] * len(columns)
    else:
        raise ValueError(f"unsupported database driver paramstyle {paramstyle!r}")
    return f"INSERT INTO {request_log.name} ({', '.join(columns)}) VALUES ({', '.join(marks)})"


_SQLITE_ROWS_PER_STATEMENT = 32  # 32 rows x 29 columns stays under SQLite's oldest parameter limit (999)


def _sqlite_values_sql(rows: int) -> str:
    """One INSERT of `rows` rows (a multi-row VALUES list), qmark style."""
    columns = [*_FIELDS, "total_tokens"]
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return f"INSERT INTO {request_log.name} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _sqlite_chunks(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], tuple[Any, ...]]:
    """(full chunks of _SQLITE_ROWS_PER_STATEMENT rows, each flattened; the flattened rest)."""
    n = _SQLITE_ROWS_PER_STATEMENT
    cut = len(rows) - len(rows) % n
    full = [tuple(chain.from_iterable(rows[i : i + n])) for i in range(0, cut, n)]
    return full, tuple(chain.from_iterable(rows[cut:]))


def insert_ignoring_conflicts(dialect: str, table: sa.Table) -> sa.Insert:
    """An INSERT that skips a row whose key is taken (INSERT ... ON CONFLICT DO NOTHING in each dialect's
    spelling); a dialect's module is imported only when used."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    return table.insert().prefix_with("IGNORE")  # MySQL / MariaDB


async def schema_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            value = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    except sa.exc.DBAPIError:  # no alembic_version table yet
        return None
    return str(value) if value is not None else None


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._insert_sql = _insert_sql(self.engine.dialect.paramstyle)
        self._sqlite = self.engine.dialect.name == "sqlite"

    async def migrate(self) -> None:
        await migrate(self.engine)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    async def write_usage(self, records: list[UsageRecord]) -> None:
        # Plain tuples straight to the driver: SQLAlchemy's per-row parameter processing runs on the event
        # loop and, for a batch of hundreds of rows, was a stall every flush (the c=1 p99).
        # Records come sanitized (each number within its column); only the sum can still overflow.
        rows = [(*_row(r), min(r.prompt_tokens + r.completion_tokens, INT_MAX)) for r in records]
        async with self.engine.begin() as conn:
            if not self._sqlite:
                await conn.exec_driver_sql(self._insert_sql, rows)
                return
            # SQLite: rows go in 32 to a statement. The driver releases the GIL once per statement step, so a
            # row per statement meant hundreds of GIL hand-offs per flush with the event loop; and a
            # multi-row VALUES list costs SQLite half the CPU of the earlier one-statement json_each insert.
            full, rest = _sqlite_chunks(rows)
            if full:
                await conn.exec_driver_sql(_sqlite_values_sql(_SQLITE_ROWS_PER_STATEMENT), full)
            if rest:
                await conn.exec_driver_sql(_sqlite_values_sql(len(rows) % _SQLITE_ROWS_PER_STATEMENT), rest)

    async def aclose(self) -> None:
        await self.engine.dispose()
