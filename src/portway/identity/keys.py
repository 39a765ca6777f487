"""Virtual keys: create (plaintext returned once), list, update, revoke, rotate. Only hashes are stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from portway.errors import NotFound, ValidationError
from portway.identity.crypto import KeyHasher, display_prefix, new_api_key, new_id
from portway.identity.models import KeyCreate, KeyUpdate
from portway.limits.policy import iso
from portway.limits.spec import limit_values
from portway.stores.sql.identity import IdentityStore, KeyRow


def key_status(key: KeyRow, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def key_json(key: KeyRow, now: float | None = None) -> dict[str, Any]:
    """The public view of a key: never the hash, never the plaintext."""
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "display_prefix": key.display_prefix,
        "status": key_status(key, time.time() if now is None else now),
        "user_id": key.user_id,
        "policy_id": key.policy_id,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
        "allowed_models": key.allowed_models,
        **limit_values(key),
        "metadata": key.meta or {},
        "cache": key.cache,
    }


def new_key_row(hasher: KeyHasher, plaintext: str, template: KeyRow | None = None, **fields: Any) -> KeyRow:
    """A fresh row for ``plaintext``: a copy of ``template``'s settings (rotation) or built from fields."""
    now = time.time()
    ident: dict[str, Any] = {
        "id": new_id("key_"),
        "key_hash": hasher.hash(plaintext),
        "display_prefix": display_prefix(plaintext),
        "created_at": now,
        "revoked_at": None,
        "last_used_at": None,
    }
    if template is not None:
        return replace(template, **ident, **fields)
    return KeyRow(**ident, **fields)


class KeyService:
    def __init__(self, store: IdentityStore, hasher: KeyHasher, on_change: Callable[[KeyRow], None]) -> None:
        self.store = store
        self.hasher = hasher
        self._on_change = on_change  # drops the key from the authentication cache at once

    async def _check_user(self, user_id: str | None) -> None:
        if user_id is not None and await self.store.get_user(user_id) is None:
            raise ValidationError(f"user_id: no user with id {user_id!r}", param="user_id")

    async def create(self, body: KeyCreate) -> tuple[KeyRow, str]:
        """The new key row and its plaintext, which is never available again."""
        await self._check_user(body.user_id)
        plaintext = new_api_key()
        row = new_key_row(
            self.hasher,
            plaintext,
            name=body.name,
            user_id=body.user_id,
            policy_id=None,
            expires_at=body.expiry(time.time()),
            allowed_models=body.allowed_models,
            **limit_values(body),
            meta=body.metadata or {},
            cache=body.cache,
        )
        await self.store.insert_key(row)
        self._on_change(row)  # a negative cache entry for this hash would otherwise hide it for 2 s
        return row, plaintext

    async def get(self, key_id: str) -> KeyRow:
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFound(f"No API key with id {key_id!r}", param="key_id")
        return key

    async def page(
        self,
        *,
        limit: int,
        offset: int,
        user_id: str | None = None,
        name: str | None = None,
        revoked: bool | None = None,
    ) -> tuple[list[KeyRow], int]:
        return await self.store.list_keys(
            limit=limit, offset=offset, user_id=user_id, name=name, revoked=revoked
        )

    async def update(self, key_id: str, body: KeyUpdate) -> KeyRow:
        values: dict[str, Any] = body.changes()
        fields_set = body.model_fields_set
        for name in ("name", "allowed_models", "cache"):
            if name in fields_set:
                values[name] = getattr(body, name)
        if "metadata" in fields_set:
            values["meta"] = body.metadata or {}
        if fields_set & {"expires_at", "expires_in_seconds"}:
            values["expires_at"] = body.expiry(time.time())
        key = await self.store.update_key(key_id, values)
        if key is None:
            raise NotFound(f"No API key with id {key_id!r}", param="key_id")
        self._on_change(key)
        return key

    async def revoke(self, key_id: str) -> KeyRow:
        key = await self.store.revoke_key(key_id, time.time())
        if key is None:
            raise NotFound(f"No API key with id {key_id!r}", param="key_id")
        self._on_change(key)
        return key

    async def rotate(self, key_id: str) -> tuple[KeyRow, str]:
        """Revoke the key and issue a new one with the same settings; the new plaintext is returned once."""
        old = await self.get(key_id)
        if old.policy_id is not None:
            raise ValidationError(
                "This key belongs to a rotating key policy; use POST /admin/key-policies/{name}/rotate",
                param="key_id",
            )
        plaintext = new_api_key()
        new = new_key_row(self.hasher, plaintext, template=old)
        if not await self.store.replace_key(old.id, new, time.time()):
            raise ValidationError("This key is revoked; create a new key instead", param="key_id")
        self._on_change(old)
        self._on_change(new)
        return new, plaintext
