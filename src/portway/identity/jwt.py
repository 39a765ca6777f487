"""Access tokens for users: HS256 JWTs with a pinned algorithm and required claims.

Decoding pins ``algorithms=["HS256"]`` (so ``alg: none`` and algorithm-confusion tokens are refused),
requires ``exp``, ``iat`` and ``sub``, and verifies the signature; every failure becomes the same
401 ``invalid_api_key`` as a bad key, without saying which check failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from portway.errors import InvalidApiKey

ALGORITHM = "HS256"
JWT_KEY_FILE = "jwt.key"
DEFAULT_EXPIRE_SECONDS = 86_400
_INVALID = "Invalid or expired access token"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    email: str | None
    issued_at: float
    expires_at: float


def looks_like_jwt(token: str) -> bool:
    """Distinguish by shape: a compact JWS has exactly two dots; virtual keys have none."""
    return token.count(".") == 2


class JwtCodec:
    def __init__(self, secret: bytes, expire_seconds: int = DEFAULT_EXPIRE_SECONDS) -> None:
        if expire_seconds <= 0:
            raise ValueError("JWT expiry must be positive")
        self._secret = secret
        self.expire_seconds = expire_seconds

    def issue(self, user_id: str, email: str, *, is_admin: bool, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": user_id,
            "email": email,
            "iat": iat,
            "exp": iat + self.expire_seconds,
            # Informational only: authorisation re-reads the user, so a demotion applies at once.
            "adm": is_admin,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub"], "verify_signature": True},
            )
        except jwt.PyJWTError:
            raise InvalidApiKey(_INVALID) from None
        sub, email = claims.get("sub"), claims.get("email")
        if not isinstance(sub, str) or not sub or not (email is None or isinstance(email, str)):
            raise InvalidApiKey(_INVALID)
        return TokenClaims(sub, email, float(claims["iat"]), float(claims["exp"]))
