"""The response cache's database store (table `response_cache`, migration 0011): key -> answer, with expiry.

Reads happen on the request path only for requests whose model has the cache enabled; writes come from
background tasks (services/cache.py). Expired rows are never answered and are swept at most once a minute,
by a write.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.tables import metadata

SWEEP_EVERY = 60.0  # seconds between deletions of expired rows (per worker)

response_cache = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # sha256 hex of namespace + normalized request
    sa.Column("expires_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Index("ix_response_cache_expires", "expires_at"),
)
_c = response_cache.c


class SqlCacheStore:
    name = "database"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._swept = 0.0

    async def get(self, key: str) -> bytes | None:
        query = sa.select(_c.value).where(_c.key == key, _c.expires_at > time.time())
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else bytes(value)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        now = time.time()
        try:
            async with self.engine.begin() as conn:
                # Delete then insert: one portable upsert (an expired row of the same key is replaced).
                await conn.execute(response_cache.delete().where(_c.key == key))
                await conn.execute(response_cache.insert().values(key=key, expires_at=now + ttl, value=value))
                if now - self._swept >= SWEEP_EVERY:
                    self._swept = now
                    await conn.execute(response_cache.delete().where(_c.expires_at <= now))
        except IntegrityError:
            pass  # another worker stored the same answer first: the same bytes, nothing to do

    async def aclose(self) -> None:
        return None  # the engine is the runtime's
