"""Identity: who a virtual key or a user's JWT belongs to, plus the services behind the admin API.

Hot path. ``resolve_key`` hashes the key (HMAC, ~1 µs) and looks the hash up in an in-process TTL cache
(hits: 10 s; unknown hashes: 2 s, so a flood of bad keys does not reach the DB either). Expiry and
revocation are checked against the cached row on every request. Revoking, updating or rotating a key
through this process drops its cache entry at once; **other replicas see the change within the TTL**
(10 s), except rotation, which every replica's own timer applies on schedule. ``last_used_at`` is
recorded at most once a minute per key and written in batches by a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from portway.errors import ConfigError, InvalidApiKey, NotFound, ValidationError
from portway.identity.auth import Principal
from portway.identity.cache import TTLCache
from portway.identity.crypto import SECRET_KEY_FILE, KeyHasher, Sealer, load_or_create_secret
from portway.identity.jwt import DEFAULT_EXPIRE_SECONDS, JWT_KEY_FILE, JwtCodec
from portway.identity.keys import KeyService, key_json
from portway.identity.models import LoginRequest
from portway.identity.rotation import Rotator
from portway.identity.users import Passwords, UserService
from portway.limits.counters import Counters
from portway.limits.policy import limits_for, usage_json
from portway.limits.spec import Limit, LimitSpec
from portway.settings import Settings
from portway.stores.sql.identity import IdentityStore, KeyRow, UserRow

log = logging.getLogger("portway.identity")
LOGIN_MODES = ("password", "email_only")
KEY_CACHE_TTL = 10.0
NEGATIVE_CACHE_TTL = 2.0
TOUCH_INTERVAL = 60.0  # last_used_at resolution per key
FLUSH_INTERVAL = 5.0  # how often recorded uses are written
_BAD_KEY = "Incorrect API key provided"


def _setting(settings: Settings, name: str, env: Mapping[str, str]) -> Any:
    # Settings may not declare every identity field yet: fall back to the PORTWAY_* variable.
    value = getattr(settings, name, None)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        value = env.get(f"PORTWAY_{name.upper()}") or None
    return value


def _emails(value: str | Iterable[str] | None) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else (value or [])
    return frozenset(e.strip().lower() for e in items if e and e.strip())


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    data_dir: Path
    secret_key: str | None = None  # PORTWAY_SECRET_KEY: hashes keys, seals rotating keys
    jwt_secret: str | None = None  # PORTWAY_JWT_SECRET
    jwt_expire_seconds: int = DEFAULT_EXPIRE_SECONDS  # PORTWAY_JWT_EXPIRE_SECONDS
    login_mode: str = "password"  # PORTWAY_LOGIN_MODE: "password" | "email_only" (trusted networks only)
    admin_emails: frozenset[str] = frozenset()  # PORTWAY_ADMIN_EMAILS, comma-separated

    def __post_init__(self) -> None:
        if self.login_mode not in LOGIN_MODES:
            raise ConfigError(f"PORTWAY_LOGIN_MODE must be one of {', '.join(LOGIN_MODES)}")
        if self.jwt_expire_seconds <= 0:
            raise ConfigError("PORTWAY_JWT_EXPIRE_SECONDS must be a positive number of seconds")

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> IdentityConfig:
        env = os.environ if env is None else env
        expire = _setting(settings, "jwt_expire_seconds", env) or DEFAULT_EXPIRE_SECONDS
        try:
            expire = int(expire)
        except ValueError:
            raise ConfigError("PORTWAY_JWT_EXPIRE_SECONDS must be an integer") from None
        return cls(
            data_dir=settings.data_dir,
            secret_key=_setting(settings, "secret_key", env),
            jwt_secret=_setting(settings, "jwt_secret", env),
            jwt_expire_seconds=expire,
            login_mode=str(_setting(settings, "login_mode", env) or "password").strip().lower(),
            admin_emails=_emails(_setting(settings, "admin_emails", env)),
        )


@dataclass(frozen=True, slots=True)
class _KeyEntry:
    key: KeyRow
    owner: UserRow | None
    principal: Principal


def _key_principal(key: KeyRow, owner: UserRow | None) -> Principal:
    models = None if key.allowed_models is None else tuple(key.allowed_models)
    return Principal(
        id=f"key:{key.id}",
        is_admin=False,  # virtual keys never administer, whoever owns them
        key_id=key.id,
        user_id=key.user_id,
        allowed_models=models,
        key_limits=LimitSpec.of(key),
        user_limits=None if owner is None else LimitSpec.of(owner),
        cache=key.cache,
    )


class Identity:
    """Users, virtual keys, rotating policies and JWTs; implements ``identity.auth.TokenResolver``."""

    def __init__(
        self,
        config: IdentityConfig,
        engine: AsyncEngine,
        *,
        key_ttl: float = KEY_CACHE_TTL,
        negative_ttl: float = NEGATIVE_CACHE_TTL,
    ) -> None:
        self.config = config
        self.store = IdentityStore(engine)
        secret = load_or_create_secret(config.data_dir, SECRET_KEY_FILE, config.secret_key)
        self.hasher = KeyHasher(secret)
        self.jwt = JwtCodec(
            load_or_create_secret(config.data_dir, JWT_KEY_FILE, config.jwt_secret), config.jwt_expire_seconds
        )
        self.keys = KeyService(self.store, self.hasher, self._key_changed)
        self.users = UserService(self.store, Passwords(), config.admin_emails, self._user_changed)
        self.rotation = Rotator(self.store, self.hasher, Sealer(secret), self._key_id_changed)
        self._key_ttl, self._negative_ttl = key_ttl, negative_ttl
        self._keys: TTLCache[str, _KeyEntry | None] = TTLCache()
        self._key_loads: dict[str, asyncio.Future[_KeyEntry | None]] = {}
        self._users: TTLCache[str, UserRow | None] = TTLCache()
        self._touched: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the rotation timer and the last-used writer (call after migrations)."""
        await self.users.passwords.warm()
        self.rotation.start()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="portway-key-last-used")

    async def aclose(self) -> None:
        await self.rotation.aclose()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with contextlib.suppress(Exception):
            await self._flush_touches()

    # -- authentication (hot path) -----------------------------------------------------------------------

    async def _load_shared(self, key_hash: str) -> _KeyEntry | None:
        # Single flight: when a busy key's cache entry expires, the requests in flight share one query
        # instead of each running its own (a thundering herd under many concurrent streams).
        load = self._key_loads.get(key_hash)
        if load is None:
            load = asyncio.ensure_future(self._load_key(key_hash))
            self._key_loads[key_hash] = load
            load.add_done_callback(lambda _: self._key_loads.pop(key_hash, None))
        return await asyncio.shield(load)  # one waiter giving up must not cancel the others' load

    async def _load_key(self, key_hash: str) -> _KeyEntry | None:
        now = time.monotonic()
        found = await self.store.find_key(key_hash)
        entry = None if found is None else _KeyEntry(found[0], found[1], _key_principal(*found))
        self._keys.put(key_hash, entry, self._key_ttl if entry else self._negative_ttl, now)
        return entry

    async def resolve_key(self, token: str) -> Principal:
        key_hash = self.hasher.hash(token)
        hit, entry = self._keys.get(key_hash, time.monotonic())
        if not hit:
            entry = await self._load_shared(key_hash)
        if entry is None:
            raise InvalidApiKey(_BAD_KEY)
        key, now = entry.key, time.time()
        if key.revoked_at is not None:
            raise InvalidApiKey("This API key has been revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise InvalidApiKey("This API key has expired")
        if entry.owner is not None and entry.owner.disabled:
            raise InvalidApiKey("The user owning this API key is disabled")
        self._record_use(key, now)
        return entry.principal

    async def _user(self, user_id: str) -> UserRow | None:
        now = time.monotonic()
        hit, user = self._users.get(user_id, now)
        if not hit:
            user = await self.store.get_user(user_id)
            self._users.put(user_id, user, self._key_ttl if user else self._negative_ttl, now)
        return user

    async def resolve_jwt(self, token: str) -> Principal:
        claims = self.jwt.decode(token)
        user = await self._user(claims.user_id)
        if user is None or user.disabled:
            raise InvalidApiKey("Invalid or expired access token")
        return Principal(
            id=f"user:{user.id}",
            is_admin=self.users.is_admin(user),
            user_id=user.id,
            user_limits=LimitSpec.of(user),  # None without limits of its own: limits.per_user applies
        )

    def _record_use(self, key: KeyRow, now: float) -> None:
        last = self._touched.get(key.id, key.last_used_at or 0.0)
        if now - last >= TOUCH_INTERVAL:
            self._touched[key.id] = now
            self._pending[key.id] = now

    async def _flush_touches(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            await self.store.touch_keys(list(pending.items()))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self._flush_touches()
            except Exception:  # last_used_at is best effort: never let it take anything down
                log.warning("could not record key last_used_at", exc_info=True)

    # -- cache invalidation (admin changes in this process) ---------------------------------------------

    def _key_changed(self, key: KeyRow) -> None:
        self._keys.pop(key.key_hash)

    def _key_id_changed(self, key_id: str) -> None:
        self._keys.drop_where(lambda e: e is not None and e.key.id == key_id)

    def _user_changed(self, user_id: str) -> None:
        self._users.pop(user_id)
        self._keys.drop_where(lambda e: e is not None and e.key.user_id == user_id)

    # -- login, usage, /v1/me ----------------------------------------------------------------------------

    async def login(self, body: LoginRequest) -> dict[str, Any]:
        if self.config.login_mode == "email_only":
            user = await self.users.get_or_create(body.email)
        else:
            if body.password is None:
                raise ValidationError("password: field required", param="password")
            user = await self.users.check_password(body.email, body.password)
        token = self.jwt.issue(user.id, user.email, is_admin=self.users.is_admin(user))
        return {"access_token": token, "token_type": "bearer", "expires_in": self.jwt.expire_seconds}

    @staticmethod
    async def usage(scope: str, spec: LimitSpec | None, counters: Counters) -> dict[str, Any]:
        limits = limits_for(scope, spec)
        usages = await counters.usage(limits) if limits else []
        return {"scope": scope, "limits": [usage_json(u) for u in usages]}

    async def key_usage(self, key_id: str, counters: Counters) -> dict[str, Any]:
        key = await self.keys.get(key_id)
        return await self.usage(f"key:{key.id}", LimitSpec.of(key), counters)

    async def user_usage(
        self, user_id: str, counters: Counters, default: LimitSpec | None = None
    ) -> dict[str, Any]:
        """A user's usage against the limits admission applies: their own, else ``default``
        (``limits.per_user``)."""
        user = await self.users.get(user_id)
        return await self.usage(f"user:{user.id}", LimitSpec.of(user) or default, counters)

    async def me(self, principal: Principal, counters: Counters, limits: Sequence[Limit]) -> dict[str, Any]:
        """``limits`` are the ones admission applies to this caller (``Admission.limits``): one computation,
        so /v1/me cannot disagree with what is enforced."""
        key = user = None
        if principal.key_id is not None:
            with contextlib.suppress(NotFound):
                key = key_json(await self.keys.get(principal.key_id))
        if principal.user_id is not None:
            with contextlib.suppress(NotFound):
                user = self.users.to_json(await self.users.get(principal.user_id))
        usages = await counters.usage(limits) if limits else []
        return {
            "principal": principal.id,
            "is_admin": principal.is_admin,
            "key": key,
            "user": user,
            "limits": [usage_json(u) for u in usages],
        }
