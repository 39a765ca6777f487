"""Who is calling: the master key, a virtual key or a user's JWT (the last two via a TokenResolver)."""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from portway.errors import InvalidApiKey
from portway.identity.crypto import load_or_create_secret
from portway.limits.spec import LimitSpec

log = logging.getLogger("portway.auth")
MASTER_KEY_FILE = "master.key"
VIRTUAL_KEY_PREFIX = "sk-pw-"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str  # "master", "key:<id>", "user:<id>": safe to log and store
    is_admin: bool = False
    key_id: str | None = None
    user_id: str | None = None
    allowed_models: tuple[str, ...] | None = None  # glob patterns (aliases included); None = any model
    key_limits: LimitSpec | None = None
    user_limits: LimitSpec | None = None
    cache: bool = False  # the response cache for every model (a key's `cache`), not only cache.enabled_for


MASTER = Principal("master", is_admin=True)


def ensure_master_key(data_dir: Path, from_env: str | None) -> str:
    """PORTWAY_MASTER_KEY if set; else <data_dir>/master.key, generated (mode 0600) on first start."""
    make = lambda: "sk-pw-master-" + secrets.token_urlsafe(32)  # noqa: E731
    return load_or_create_secret(data_dir, MASTER_KEY_FILE, from_env, make).decode()


def bearer_token(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key:
        return x_api_key.strip() or None
    return None


class TokenResolver(Protocol):
    """Turns a virtual key or a user's JWT into a Principal (portway.identity.service.Identity)."""

    async def resolve_key(self, token: str) -> Principal: ...

    async def resolve_jwt(self, token: str) -> Principal: ...


class Authenticator:
    def __init__(self, master_key: str, resolver: TokenResolver | None = None) -> None:
        self._master = master_key.encode()
        self.resolver = resolver

    async def authenticate(self, token: str | None) -> Principal:
        """Master key, virtual key (``sk-pw-…``) or user JWT (two dots), in that order."""
        if token is None:
            raise InvalidApiKey("Missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
        if hmac.compare_digest(token.encode(), self._master):
            return MASTER
        if self.resolver is not None:
            if token.startswith(VIRTUAL_KEY_PREFIX):
                return await self.resolver.resolve_key(token)
            if token.count(".") == 2:
                return await self.resolver.resolve_jwt(token)
        raise InvalidApiKey("Incorrect API key provided")
