"""Video jobs (POST /v1/videos): the table and its queries (SQLAlchemy Core, async, portable SQL).

A job is run by one worker at a time, the holder of its *lease* (`lease_owner` until `lease_until`). The
holder renews the lease while it works; a worker that stops cleanly hands its jobs back (lease cleared,
status queued) and one that dies lets the lease run out. Either way another worker takes the job over with a
conditional UPDATE, so exactly one wins it (several workers, several replicas on one database).
Timestamps are unix seconds (floats).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.stores.sql.tables import metadata

ACTIVE = ("queued", "in_progress")

video_jobs = sa.Table(
    "video_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("caller", sa.JSON, nullable=False),  # what the job runs as, after a restart too
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("provider", sa.String(64)),
    sa.Column("served_model", sa.String(256)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seconds", sa.String(16), nullable=False),
    sa.Column("size", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("input_file", sa.String(64)),  # the input_reference, kept in the file store
    sa.Column("input_name", sa.String(256)),
    sa.Column("result_file", sa.String(64)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("expires_at", sa.Float),
    sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(32)),
    sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
    sa.Index("ix_video_jobs_principal_created", "principal", "created_at"),
    sa.Index("ix_video_jobs_created_at", "created_at"),
    sa.Index("ix_video_jobs_status_lease", "status", "lease_until"),
)


@dataclass(slots=True)
class VideoJobRow:
    id: str
    principal: str
    caller: dict[str, Any]
    model: str
    status: str
    prompt: str
    seconds: str
    size: str
    payload: dict[str, Any]
    created_at: float
    provider: str | None = None
    served_model: str | None = None
    progress: int = 0
    input_file: str | None = None
    input_name: str | None = None
    result_file: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    runs: int = 0
    lease_owner: str | None = None
    lease_until: float = 0.0


_COLUMNS = tuple(f.name for f in fields(VideoJobRow))
_c = video_jobs.c


def _row(mapping: Any) -> VideoJobRow:
    return VideoJobRow(**{name: mapping[name] for name in _COLUMNS})


class VideoJobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert(self, job: VideoJobRow) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(video_jobs.insert().values({n: getattr(job, n) for n in _COLUMNS}))

    async def get(self, job_id: str) -> VideoJobRow | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.select(video_jobs).where(_c.id == job_id))).mappings().first()
        return None if found is None else _row(found)

    async def page(
        self, principal: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[VideoJobRow], bool]:
        """Up to `limit` jobs of `principal` (None: everyone's) after the job `after`, oldest or newest
        first; and whether more follow. Ordered by (created_at, id), so equal timestamps page stably."""
        query = sa.select(video_jobs)
        if principal is not None:
            query = query.where(_c.principal == principal)
        if after is not None:
            anchor = await self.get(after)
            if anchor is not None:
                key, ts = anchor.id, anchor.created_at
                if ascending:
                    query = query.where(sa.or_(_c.created_at > ts, sa.and_(_c.created_at == ts, _c.id > key)))
                else:
                    query = query.where(sa.or_(_c.created_at < ts, sa.and_(_c.created_at == ts, _c.id < key)))
        order = (_c.created_at.asc(), _c.id.asc()) if ascending else (_c.created_at.desc(), _c.id.desc())
        query = query.order_by(*order).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = [_row(m) for m in (await conn.execute(query)).mappings()]
        return rows[:limit], len(rows) > limit

    async def update(self, job_id: str, owner: str, **values: Any) -> bool:
        """Set `values` on the job while `owner` still holds it; False if the lease was lost."""
        query = video_jobs.update().where(_c.id == job_id, _c.lease_owner == owner).values(**values)
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def start_run(self, job_id: str, owner: str, now: float) -> VideoJobRow | None:
        """Mark the job in progress and count the run; the job as now stored, None if no longer ours."""
        query = (
            video_jobs.update()
            .where(_c.id == job_id, _c.lease_owner == owner, _c.status.in_(ACTIVE))
            .values(status="in_progress", started_at=now, runs=_c.runs + 1)
        )
        async with self.engine.begin() as conn:
            if (await conn.execute(query)).rowcount != 1:
                return None
        return await self.get(job_id)

    async def renew(self, owner: str, until: float) -> None:
        query = (
            video_jobs.update()
            .where(_c.lease_owner == owner, _c.status.in_(ACTIVE))
            .values(lease_until=until)
        )
        async with self.engine.begin() as conn:
            await conn.execute(query)

    async def release(self, owner: str) -> int:
        """Hand back every unfinished job of `owner` (a clean stop): another worker takes them at once."""
        query = (
            video_jobs.update()
            .where(_c.lease_owner == owner, _c.status.in_(ACTIVE))
            .values(status="queued", lease_owner=None, lease_until=0.0)
        )
        async with self.engine.begin() as conn:
            return int((await conn.execute(query)).rowcount)

    async def unclaimed(self, now: float, limit: int) -> list[str]:
        """Ids of unfinished jobs nobody holds (handed back, or their worker's lease ran out)."""
        query = (
            sa.select(_c.id)
            .where(_c.status.in_(ACTIVE), _c.lease_until < now)
            .order_by(_c.created_at.asc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [str(r) for r in (await conn.execute(query)).scalars()]

    async def claim(self, job_id: str, owner: str, now: float, until: float) -> bool:
        """Take over an unheld job; exactly one of several workers trying at once gets True."""
        query = (
            video_jobs.update()
            .where(_c.id == job_id, _c.status.in_(ACTIVE), _c.lease_until < now)
            .values(lease_owner=owner, lease_until=until)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def delete(self, job_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(video_jobs.delete().where(_c.id == job_id))
