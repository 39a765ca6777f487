"""Identity storage: users, virtual keys (hashes only) and rotating-key policies (SQLAlchemy Core, async).

Timestamps are unix seconds (floats), like ``request_log.ts``. Nothing here ever sees a plaintext virtual
key: keys arrive as an HMAC hash, and a rotating policy's current key arrives already sealed (encrypted).
Portable SQL only (SQLite and Postgres).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from portway.stores.sql.tables import metadata


def _limit_columns() -> list[sa.Column[Any]]:
    """The columns of ``LimitColumns`` (the five limit fields of ``config.LimitFields``), for every table
    that carries limits; fresh Column objects per table, as a Column belongs to one table only."""
    return [
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("daily_requests", sa.Integer),
        sa.Column("budget_usd", sa.Float),
        sa.Column("budget_period", sa.String(16), nullable=False, server_default="total"),
    ]


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(256)),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    *_limit_columns(),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

key_policies = sa.Table(
    "key_policies",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("period_seconds", sa.Float, nullable=False),
    sa.Column("grace_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("current_key_id", sa.String(32)),  # no FK: keys point at policies, not the other way round
    sa.Column("previous_key_id", sa.String(32)),
    sa.Column("rotated_at", sa.Float, nullable=False),
    sa.Column("next_rotation_at", sa.Float, nullable=False, index=True),
    sa.Column("sealed_key", sa.Text),  # the current key, encrypted with a key derived from the server secret
    sa.Column("allowed_models", sa.JSON),
    *_limit_columns(),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # hex HMAC-SHA256, never plaintext
    sa.Column("display_prefix", sa.String(16), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), index=True),
    sa.Column("policy_id", sa.String(32), sa.ForeignKey("key_policies.id"), index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
    sa.Column("allowed_models", sa.JSON),
    *_limit_columns(),
    sa.Column("meta", sa.JSON),
    # The response cache for every model this key asks for, not only cache.enabled_for's (0013).
    sa.Column("cache", sa.Boolean, nullable=False, server_default=sa.false()),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitColumns:
    """The limits a stored user, key or policy carries (``limits.spec.LimitSpec.of`` reads them). Rows are
    keyword-only: inherited fields come first, so a positional row would be easy to get wrong."""

    rpm: int | None
    tpm: int | None
    daily_requests: int | None
    budget_usd: float | None
    budget_period: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRow(LimitColumns):
    id: str
    email: str
    password_hash: str | None
    is_admin: bool
    disabled: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRow(LimitColumns):
    id: str
    key_hash: str
    display_prefix: str
    name: str
    user_id: str | None
    policy_id: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    allowed_models: list[str] | None
    meta: dict[str, Any] | None
    cache: bool = False  # a policy's keys have it off (a policy has no such setting)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRow(LimitColumns):
    id: str
    name: str
    period_seconds: float
    grace_seconds: float
    current_key_id: str | None
    previous_key_id: str | None
    rotated_at: float
    next_rotation_at: float
    sealed_key: str | None
    allowed_models: list[str] | None
    created_at: float


class DuplicateError(Exception):
    """A unique column (user email, policy name) already holds this value."""


_Row = TypeVar("_Row", UserRow, KeyRow, PolicyRow)


def _as_dict(row: UserRow | KeyRow | PolicyRow) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)}


def _load(cls: type[_Row], mapping: Mapping[Any, Any]) -> _Row:
    return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def _key_filters(
    user_id: str | None, name: str | None, revoked: bool | None, policy_id: str | None
) -> list[sa.ColumnElement[bool]]:
    c = api_keys.c
    where: list[sa.ColumnElement[bool]] = []
    if user_id is not None:
        where.append(c.user_id == user_id)
    if name is not None:
        where.append(c.name == name)
    if revoked is not None:
        where.append(c.revoked_at.is_not(None) if revoked else c.revoked_at.is_(None))
    if policy_id is not None:
        where.append(c.policy_id == policy_id)
    return where


class IdentityStore:
    """Async access to the identity tables. Methods take and return the frozen row dataclasses above."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _insert(
        self, conn: AsyncConnection, table: sa.Table, row: UserRow | KeyRow | PolicyRow
    ) -> None:
        try:
            await conn.execute(table.insert().values(**_as_dict(row)))
        except sa.exc.IntegrityError as exc:
            raise DuplicateError(table.name) from exc

    async def _page(
        self,
        table: sa.Table,
        cls: type[_Row],
        where: Sequence[sa.ColumnElement[bool]],
        limit: int,
        offset: int,
    ) -> tuple[list[_Row], int]:
        query = sa.select(table).where(*where).order_by(table.c.created_at, table.c.id)
        count = sa.select(sa.func.count()).select_from(table).where(*where)
        async with self.engine.connect() as conn:
            total = (await conn.execute(count)).scalar_one()
            rows = (await conn.execute(query.limit(limit).offset(offset))).mappings().all()
        return [_load(cls, r) for r in rows], int(total)

    async def _one(self, table: sa.Table, cls: type[_Row], where: sa.ColumnElement[bool]) -> _Row | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(table).where(where))).mappings().first()
        return None if row is None else _load(cls, row)

    async def _update(
        self, table: sa.Table, cls: type[_Row], row_id: str, values: Mapping[str, Any]
    ) -> _Row | None:
        async with self.engine.begin() as conn:
            if values:
                try:
                    await conn.execute(table.update().where(table.c.id == row_id).values(**values))
                except sa.exc.IntegrityError as exc:
                    raise DuplicateError(table.name) from exc
            row = (await conn.execute(sa.select(table).where(table.c.id == row_id))).mappings().first()
        return None if row is None else _load(cls, row)

    # -- users -----------------------------------------------------------------------------------------

    async def insert_user(self, user: UserRow) -> None:
        async with self.engine.begin() as conn:
            await self._insert(conn, users, user)

    async def get_user(self, user_id: str) -> UserRow | None:
        return await self._one(users, UserRow, users.c.id == user_id)

    async def get_user_by_email(self, email: str) -> UserRow | None:
        return await self._one(users, UserRow, users.c.email == email)

    async def list_users(
        self, *, limit: int, offset: int, email: str | None = None
    ) -> tuple[list[UserRow], int]:
        where = [] if email is None else [users.c.email == email]
        return await self._page(users, UserRow, where, limit, offset)

    async def update_user(self, user_id: str, values: Mapping[str, Any]) -> UserRow | None:
        return await self._update(users, UserRow, user_id, values)

    # -- virtual keys ----------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRow) -> None:
        async with self.engine.begin() as conn:
            await self._insert(conn, api_keys, key)

    async def get_key(self, key_id: str) -> KeyRow | None:
        return await self._one(api_keys, KeyRow, api_keys.c.id == key_id)

    async def find_key(self, key_hash: str) -> tuple[KeyRow, UserRow | None] | None:
        """The key with this hash and its owner, in one round trip (the authentication path)."""
        owner = users.alias("owner")
        cols = [*api_keys.c, *(col.label(f"owner_{col.name}") for col in owner.c)]
        query = (
            sa.select(*cols)
            .select_from(api_keys.outerjoin(owner, owner.c.id == api_keys.c.user_id))
            .where(api_keys.c.key_hash == key_hash)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        key = _load(KeyRow, row)
        if row["owner_id"] is None:
            return key, None
        return key, _load(UserRow, {f.name: row[f"owner_{f.name}"] for f in fields(UserRow)})

    async def list_keys(
        self,
        *,
        limit: int,
        offset: int,
        user_id: str | None = None,
        name: str | None = None,
        revoked: bool | None = None,
        policy_id: str | None = None,
    ) -> tuple[list[KeyRow], int]:
        where = _key_filters(user_id, name, revoked, policy_id)
        return await self._page(api_keys, KeyRow, where, limit, offset)

    async def update_key(self, key_id: str, values: Mapping[str, Any]) -> KeyRow | None:
        return await self._update(api_keys, KeyRow, key_id, values)

    async def revoke_key(self, key_id: str, now: float) -> KeyRow | None:
        """Set revoked_at (keeping the first revocation time); None if there is no such key."""
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        return None if row is None else _load(KeyRow, row)

    async def replace_key(self, old_id: str, new: KeyRow, now: float) -> bool:
        """Revoke ``old_id`` and insert ``new`` atomically. False (nothing written) if old was not active:
        two concurrent rotations of one key therefore produce one replacement, not two."""
        async with self.engine.begin() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == old_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if res.rowcount != 1:
                return False
            await self._insert(conn, api_keys, new)
        return True

    async def touch_keys(self, stamps: Sequence[tuple[str, float]]) -> None:
        """Batch-write last_used_at (called from a background task, never per request)."""
        if not stamps:
            return
        stmt = (
            api_keys.update()
            .where(api_keys.c.id == sa.bindparam("b_id"))
            .values(last_used_at=sa.bindparam("b_ts"))
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt, [{"b_id": key_id, "b_ts": ts} for key_id, ts in stamps])

    # -- rotating-key policies -------------------------------------------------------------------------

    async def insert_policy(self, policy: PolicyRow, first_key: KeyRow) -> None:
        async with self.engine.begin() as conn:
            await self._insert(conn, key_policies, policy)
            await self._insert(conn, api_keys, first_key)

    async def get_policy(self, name: str) -> PolicyRow | None:
        return await self._one(key_policies, PolicyRow, key_policies.c.name == name)

    async def list_policies(self, *, limit: int, offset: int) -> tuple[list[PolicyRow], int]:
        return await self._page(key_policies, PolicyRow, [], limit, offset)

    async def all_policies(self) -> list[PolicyRow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(key_policies))).mappings().all()
        return [_load(PolicyRow, r) for r in rows]

    async def rotate_policy(
        self, policy: PolicyRow, new_key: KeyRow, *, sealed: str, now: float, next_at: float
    ) -> bool:
        """Make ``new_key`` the policy's current key if the policy still has ``policy.current_key_id``.

        The conditional UPDATE is the arbiter between replicas racing to rotate: it is the transaction's
        first statement (so SQLite takes its write lock with a fresh snapshot, and Postgres re-checks the
        WHERE after a concurrent commit); only the winner inserts the new key and expires the old one.
        """
        c = key_policies.c
        same_key = (
            c.current_key_id.is_(None)
            if policy.current_key_id is None
            else (c.current_key_id == policy.current_key_id)
        )
        async with self.engine.begin() as conn:
            res = await conn.execute(
                key_policies.update()
                .where(c.id == policy.id, same_key)
                .values(
                    current_key_id=new_key.id,
                    previous_key_id=policy.current_key_id,
                    rotated_at=now,
                    next_rotation_at=next_at,
                    sealed_key=sealed,
                )
            )
            if res.rowcount != 1:
                return False
            await self._insert(conn, api_keys, new_key)
            if policy.current_key_id is not None:
                until = now + policy.grace_seconds
                k = api_keys.c
                await conn.execute(
                    api_keys.update()
                    .where(
                        k.id == policy.current_key_id, sa.or_(k.expires_at.is_(None), k.expires_at > until)
                    )
                    .values(expires_at=until)
                )
        return True
