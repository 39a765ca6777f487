"""Chat sessions and their messages (SQLAlchemy Core, async): the tables and every query of chat history.

A session belongs to one owner (a principal id: "master", "key:<id>", "user:<id>"): every query that
reads or changes one is scoped to its owner, so another caller's session is simply not found. Messages are
numbered per session from 1 (`position`); a session's `message_count` is the last position handed out,
advanced with a conditional UPDATE ... RETURNING, so concurrent appends (several workers) never share a
position. There is no foreign key (SQLite enforces none by default): a session's messages are deleted with
it, in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portway.stores.sql.database import insert_ignoring_conflicts
from portway.stores.sql.tables import metadata

ID_LENGTH = 64
OWNER_LENGTH = 128
TITLE_LENGTH = 256
ROLE_LENGTH = 32

chat_sessions = sa.Table(
    "chat_sessions",
    metadata,
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("owner", sa.String(OWNER_LENGTH), nullable=False),
    sa.Column("title", sa.String(TITLE_LENGTH)),
    sa.Column("metadata", sa.JSON),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_chat_sessions_owner_updated", "owner", "updated_at"),
)

chat_messages = sa.Table(
    "chat_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("role", sa.String(ROLE_LENGTH), nullable=False),
    sa.Column("message", sa.JSON, nullable=False),  # the chat message object (role, content, tool_calls...)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_chat_messages_session_position", "session_id", "position", unique=True),
)


@dataclass(slots=True)
class SessionRow:
    id: str
    owner: str
    title: str | None
    metadata: dict[str, Any] | None
    created_at: float
    updated_at: float
    message_count: int


@dataclass(slots=True)
class MessageRow:
    position: int
    role: str
    message: dict[str, Any]
    created_at: float


_SESSION_COLUMNS = tuple(f.name for f in fields(SessionRow))
_s = chat_sessions.c
_m = chat_messages.c


def _session(mapping: Any) -> SessionRow:
    return SessionRow(**{name: mapping[name] for name in _SESSION_COLUMNS})


def _message(row: Any) -> MessageRow:
    return MessageRow(row.position, row.role, row.message, row.created_at)


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert_new = insert_ignoring_conflicts(engine.dialect.name, chat_sessions)

    # -- sessions

    async def get(self, owner: str, session_id: str) -> SessionRow | None:
        query = sa.select(chat_sessions).where(_s.id == session_id, _s.owner == owner)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query)).mappings().first()
        return None if found is None else _session(found)

    async def owner_of(self, session_id: str) -> str | None:
        async with self.engine.connect() as conn:
            owner: str | None = await conn.scalar(sa.select(_s.owner).where(_s.id == session_id))
        return owner

    async def count(self, owner: str) -> int:
        query = sa.select(sa.func.count()).select_from(chat_sessions).where(_s.owner == owner)
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def create(self, row: SessionRow) -> bool:
        """False when the id is taken (by anyone)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(chat_sessions.insert().values(_values(row)))
        except IntegrityError:
            return False
        return True

    async def page(self, owner: str, limit: int, offset: int) -> tuple[list[SessionRow], bool]:
        """The owner's sessions, most recently updated first; and whether more follow."""
        query = (
            sa.select(chat_sessions)
            .where(_s.owner == owner)
            .order_by(_s.updated_at.desc(), _s.id)
            .limit(limit + 1)
            .offset(offset)
        )
        async with self.engine.connect() as conn:
            rows = [_session(m) for m in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    async def delete(self, owner: str, session_id: str) -> bool:
        async with self.engine.begin() as conn:
            gone = await conn.execute(chat_sessions.delete().where(_s.id == session_id, _s.owner == owner))
            if gone.rowcount != 1:
                return False
            await conn.execute(chat_messages.delete().where(_m.session_id == session_id))
        return True

    # -- messages

    async def messages(
        self,
        session_id: str,
        limit: int,
        *,
        after: int | None = None,
        before: int | None = None,
        offset: int = 0,
    ) -> tuple[list[MessageRow], bool]:
        """One page of a session's messages, oldest first, and whether more follow in the paging direction:
        after a position (forward), the `limit` right before a position (backward), or from an offset."""
        query = sa.select(_m.position, _m.role, _m.message, _m.created_at).where(_m.session_id == session_id)
        backward = before is not None
        if after is not None:
            query = query.where(_m.position > after)
        if backward:
            query = query.where(_m.position < before).order_by(_m.position.desc())
        else:
            query = query.order_by(_m.position).offset(offset)
        async with self.engine.connect() as conn:
            rows = [_message(r) for r in await conn.execute(query.limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        return (rows[::-1] if backward else rows), more

    async def last_messages(self, session_id: str, count: int) -> list[MessageRow]:
        """The newest `count` messages, oldest first."""
        rows, _ = await self.messages(session_id, count, before=2**31 - 1)
        return rows

    async def append(
        self,
        owner: str,
        session_id: str,
        messages: list[dict[str, Any]],
        now: float,
        title: str | None = None,
    ) -> bool:
        """Add messages at the session's end, creating the session (owned by `owner`, with `title`) if it
        is not there. False when the session is another owner's (nothing is written)."""
        async with self.engine.begin() as conn:
            await self._ensure(conn, owner, session_id, now, title)
            last = await conn.scalar(
                chat_sessions.update()
                .where(_s.id == session_id, _s.owner == owner)
                .values(message_count=_s.message_count + len(messages), updated_at=now)
                .returning(_s.message_count)
            )
            if last is None:
                return False
            first = int(last) - len(messages) + 1
            if messages:
                await conn.execute(
                    chat_messages.insert(),
                    [
                        {
                            "session_id": session_id,
                            "position": first + i,
                            "role": str(m.get("role"))[:ROLE_LENGTH],
                            "message": m,
                            "created_at": now,
                        }
                        for i, m in enumerate(messages)
                    ],
                )
        return True

    async def _ensure(
        self, conn: AsyncConnection, owner: str, session_id: str, now: float, title: str | None
    ) -> None:
        row = {
            "id": session_id,
            "owner": owner,
            "title": title,
            "created_at": now,
            "updated_at": now,
            "message_count": 0,
        }
        await conn.execute(self._insert_new.values(row))


def _values(row: SessionRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _SESSION_COLUMNS}
