"""Stored responses (POST /v1/responses with `store`): the table and its queries (SQLAlchemy Core, async).

A row holds the Response object as it was answered and the request's own input items; the conversation
before it is reached through `previous_response_id`, one recursive query for the whole chain (each row
stores its own turn only, so a long conversation costs linear, not quadratic, space). Rows belong to the
principal that created them: every query is scoped to it, so another caller finds nothing (404).

Writes happen after the answer (`save_later`): a background task per row, awaited by a read of the same id
in this worker (a client that continues a conversation at once finds the turn it was just answered) and by
`aclose` at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.tables import metadata

log = logging.getLogger("portway.responses")

MAX_CHAIN = 1000  # previous_response_id links followed at most (a chain is acyclic; this bounds the query)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("previous_response_id", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),  # the Response object as answered
    sa.Column("input_items", sa.JSON, nullable=False),  # this request's own input items (normalised)
    sa.Index("ix_responses_principal_created", "principal", "created_at"),
)


@dataclass(slots=True)
class StoredResponse:
    id: str
    principal: str
    previous_response_id: str | None
    created_at: float
    model: str
    status: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


_COLUMNS = tuple(f.name for f in fields(StoredResponse))
_c = responses.c


def _row(mapping: Any) -> StoredResponse:
    return StoredResponse(**{name: mapping[name] for name in _COLUMNS})


class ResponseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._pending: dict[str, asyncio.Task[None]] = {}

    # -- writes

    async def insert(self, row: StoredResponse) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(responses.insert().values({n: getattr(row, n) for n in _COLUMNS}))

    def save_later(self, row: StoredResponse) -> None:
        """Write `row` in the background (the client has its answer; a failure is logged)."""
        task = asyncio.create_task(self._save(row), name=f"portway-store-{row.id}")
        self._pending[row.id] = task
        task.add_done_callback(lambda _: self._pending.pop(row.id, None))

    async def _save(self, row: StoredResponse) -> None:
        try:
            await self.insert(row)
        except Exception:
            log.exception("could not store response %s", row.id)

    async def _settled(self, response_id: str) -> None:
        task = self._pending.get(response_id)
        if task is not None:
            await asyncio.shield(task)

    async def aclose(self) -> None:
        """Finish the writes still in flight (at shutdown)."""
        tasks = list(self._pending.values())
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)

    # -- reads, scoped to the owner

    async def get(self, response_id: str, principal: str) -> StoredResponse | None:
        await self._settled(response_id)
        query = sa.select(responses).where(_c.id == response_id, _c.principal == principal)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query)).mappings().first()
        return None if found is None else _row(found)

    async def delete(self, response_id: str, principal: str) -> bool:
        await self._settled(response_id)
        query = responses.delete().where(_c.id == response_id, _c.principal == principal)
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def history(self, response_id: str, principal: str) -> list[dict[str, Any]] | None:
        """The conversation up to and including `response_id`: each turn's input items then its output,
        oldest first; None when the response is not there (or not the principal's). A deleted response
        ends the chain there, as its turns are gone."""
        await self._settled(response_id)
        first = sa.select(
            _c.id,
            _c.previous_response_id,
            _c.input_items,
            _c.response,
            sa.literal_column("0", sa.Integer).label("depth"),
        ).where(_c.id == response_id, _c.principal == principal)
        chain = first.cte("chain", recursive=True)
        step = sa.select(
            _c.id, _c.previous_response_id, _c.input_items, _c.response, (chain.c.depth + 1).label("depth")
        ).where(_c.id == chain.c.previous_response_id, _c.principal == principal, chain.c.depth < MAX_CHAIN)
        chain = chain.union_all(step)
        query = sa.select(chain.c.input_items, chain.c.response).order_by(chain.c.depth.desc())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return None
        items: list[dict[str, Any]] = []
        for input_items, response in rows:
            items += input_items
            items += response.get("output") or []
        return items
