"""Users: creation, updates, argon2 passwords, login checks. Admin status also comes from
PORTWAY_ADMIN_EMAILS, evaluated whenever a user is looked up (so editing the list needs no DB change)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from portway.errors import InvalidApiKey, NotFound, ValidationError
from portway.identity.crypto import new_id
from portway.identity.models import UserCreate, UserUpdate, normalize_email
from portway.limits.policy import iso
from portway.limits.spec import limit_values
from portway.stores.sql.identity import DuplicateError, IdentityStore, UserRow

LOGIN_FAILED = "Incorrect email or password"


class Passwords:
    """argon2id hashing off the event loop (it is deliberately slow and memory-hard)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._ph = hasher or PasswordHasher()
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._ph.hash, password)

    def _verify(self, hashed: str, password: str) -> bool:
        try:
            return self._ph.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False

    async def warm(self) -> None:
        """Compute the dummy hash up front, so even the first failed login costs a normal verify."""
        if self._dummy is None:
            self._dummy = await self.hash("portway-dummy-password")

    async def verify(self, hashed: str | None, password: str) -> bool:
        """Check a password; with no hash (unknown user, no password set) spend the same time on a
        dummy hash and fail, so response times do not reveal which emails exist."""
        if hashed is None:
            await self.warm()
            assert self._dummy is not None
            await asyncio.to_thread(self._verify, self._dummy, password + "x")
            return False
        return await asyncio.to_thread(self._verify, hashed, password)


class UserService:
    def __init__(
        self,
        store: IdentityStore,
        passwords: Passwords,
        admin_emails: frozenset[str],
        on_change: Callable[[str], None],
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.admin_emails = admin_emails
        self._on_change = on_change  # invalidates cached principals of this user (and their keys)

    def is_admin(self, user: UserRow) -> bool:
        return user.is_admin or user.email in self.admin_emails

    def to_json(self, user: UserRow) -> dict[str, Any]:
        return {
            "id": user.id,
            "object": "user",
            "email": user.email,
            "is_admin": self.is_admin(user),
            "admin_by_config": user.email in self.admin_emails,
            "disabled": user.disabled,
            "has_password": user.password_hash is not None,
            **limit_values(user),
            "created_at": iso(user.created_at),
            "updated_at": iso(user.updated_at),
        }

    async def create(self, body: UserCreate) -> UserRow:
        now = time.time()
        hashed = None if body.password is None else await self.passwords.hash(body.password)
        user = UserRow(
            id=new_id("user_"),
            email=body.email,
            password_hash=hashed,
            is_admin=body.is_admin,
            disabled=body.disabled,
            **limit_values(body),
            created_at=now,
            updated_at=now,
        )
        try:
            await self.store.insert_user(user)
        except DuplicateError:
            raise ValidationError("A user with this email already exists", param="email") from None
        return user

    async def get(self, user_id: str) -> UserRow:
        user = await self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id!r}", param="user_id")
        return user

    async def page(self, *, limit: int, offset: int, email: str | None = None) -> tuple[list[UserRow], int]:
        return await self.store.list_users(limit=limit, offset=offset, email=email)

    async def update(self, user_id: str, body: UserUpdate) -> UserRow:
        values: dict[str, Any] = body.changes()
        for name in ("email", "is_admin", "disabled"):
            if name in body.model_fields_set:
                values[name] = getattr(body, name)
        if "password" in body.model_fields_set:
            values["password_hash"] = (
                None if body.password is None else await self.passwords.hash(body.password)
            )
        values["updated_at"] = time.time()
        try:
            user = await self.store.update_user(user_id, values)
        except DuplicateError:
            raise ValidationError("A user with this email already exists", param="email") from None
        if user is None:
            raise NotFound(f"No user with id {user_id!r}", param="user_id")
        self._on_change(user_id)
        return user

    async def check_password(self, email: str, password: str) -> UserRow:
        """The user for (email, password), or one generic 401 for every kind of failure."""
        try:
            email = normalize_email(email)
        except ValueError:
            email = ""
        user = await self.store.get_user_by_email(email) if email else None
        ok = await self.passwords.verify(None if user is None else user.password_hash, password)
        if user is None or not ok or user.disabled:
            raise InvalidApiKey(LOGIN_FAILED)
        return user

    async def get_or_create(self, email: str) -> UserRow:
        """email_only login: the user with this email, created on first login (trusted networks only)."""
        try:
            email = normalize_email(email)
        except ValueError:
            raise ValidationError("email: not a valid email address", param="email") from None
        user = await self.store.get_user_by_email(email)
        if user is None:
            try:
                user = await self.create(UserCreate(email=email))
            except ValidationError:  # a concurrent first login created it
                user = await self.store.get_user_by_email(email)
        if user is None or user.disabled:
            raise InvalidApiKey(LOGIN_FAILED)
        return user
