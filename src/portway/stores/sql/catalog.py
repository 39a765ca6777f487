"""The model catalog's stored half: each provider's last good model list, so a restarted worker (or another
replica) serves the catalog at once and a provider that is down is served from what it last said.

One row per catalog model ("provider/model"); `entry` is the merged model as services/catalog.py builds
it, `created` the model's own timestamp (or when portway first saw it: kept across refreshes, so
`/v1/models` never shows a server's start time), `fetched_at` when its provider's list was taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.tables import metadata

model_catalog = sa.Table(
    "model_catalog",
    metadata,
    sa.Column("id", sa.String(320), primary_key=True),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("entry", sa.JSON, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("fetched_at", sa.Float, nullable=False),
    sa.Index("ix_model_catalog_provider", "provider"),
)
_c = model_catalog.c


@dataclass(frozen=True, slots=True)
class CatalogRow:
    id: str
    provider: str
    entry: dict[str, Any]
    created: int
    fetched_at: float


class CatalogStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self) -> list[CatalogRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(_c.id, _c.provider, _c.entry, _c.created, _c.fetched_at))
            return [CatalogRow(*row) for row in result]

    async def replace_provider(self, provider: str, rows: list[CatalogRow]) -> None:
        """One provider's list, swapped whole in one transaction (a reader sees the old or the new)."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(model_catalog).where(_c.provider == provider))
            if rows:
                await conn.execute(
                    sa.insert(model_catalog),
                    [
                        {
                            "id": r.id,
                            "provider": r.provider,
                            "entry": r.entry,
                            "created": r.created,
                            "fetched_at": r.fetched_at,
                        }
                        for r in rows
                    ],
                )
