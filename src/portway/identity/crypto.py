"""Server secrets, virtual-key generation and hashing, and sealing (encrypting) a rotating key at rest.

* Virtual keys are ``sk-pw-`` + 32 random bytes (256 bits, url-safe base64). The DB keeps only
  HMAC-SHA256(server secret, key): a stolen database cannot be used to call the gateway, and without the
  server secret the hashes cannot even be brute-forced offline.
* The server secret comes from PORTWAY_SECRET_KEY, else ``<data_dir>/secret.key`` (generated once,
  mode 0600). Changing it invalidates every virtual key and every sealed rotating key.
* Sealing: the rotating policy's *current* key must be readable by admins, so it is stored encrypted.
  ``cryptography`` is not a dependency, so the cipher is built from the standard library only:
  a stream cipher with HMAC-SHA256 as the PRF in counter mode (keystream block i =
  HMAC(enc_key, nonce || i)), random 16-byte nonce, then encrypt-then-MAC with a separate key
  (HMAC-SHA256 over version || nonce || ciphertext, checked in constant time). Both keys are derived
  from the server secret with distinct labels, so they never double as the key-hashing key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("portway.identity")

KEY_PREFIX = "sk-pw-"
SECRET_KEY_FILE = "secret.key"
_SEAL_VERSION = b"pw1"
_NONCE = 16
_TAG = 32


def new_api_key() -> str:
    """A fresh virtual key: 256 bits from the OS CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    """A short public identifier (72 random bits), e.g. ``key_3fQk...``: safe to log and show."""
    return prefix + secrets.token_urlsafe(9)


def display_prefix(key: str) -> str:
    """What listings show of a key: the prefix plus 4 characters (24 of its 256 bits)."""
    return key[:10] + "…"


def derive_key(secret: bytes, label: str) -> bytes:
    """A purpose-bound subkey, so one server secret never serves two purposes directly."""
    return hmac.new(secret, b"portway/" + label.encode(), hashlib.sha256).digest()


class KeyHasher:
    def __init__(self, secret: bytes) -> None:
        # Keyed once; each hash copies the keyed state (cheaper than setting the key up per request).
        self._keyed = hmac.new(derive_key(secret, "virtual-key-hash/v1"), digestmod=hashlib.sha256)

    def hash(self, api_key: str) -> str:
        mac = self._keyed.copy()
        mac.update(api_key.encode())
        return mac.hexdigest()


def _xor_stream(key: bytes, nonce: bytes, data: bytes) -> bytes:
    out = bytearray()
    for block in range(0, len(data), 32):
        pad = hmac.new(key, nonce + block.to_bytes(8, "big"), hashlib.sha256).digest()
        out.extend(a ^ b for a, b in zip(data[block : block + 32], pad, strict=False))
    return bytes(out)


class Sealer:
    """Authenticated encryption of short secrets with a key derived from the server secret."""

    def __init__(self, secret: bytes) -> None:
        self._enc = derive_key(secret, "seal-enc/v1")
        self._mac = derive_key(secret, "seal-mac/v1")

    def _tag(self, nonce: bytes, ct: bytes) -> bytes:
        return hmac.new(self._mac, _SEAL_VERSION + nonce + ct, hashlib.sha256).digest()

    def seal(self, plaintext: str) -> str:
        nonce = secrets.token_bytes(_NONCE)
        ct = _xor_stream(self._enc, nonce, plaintext.encode())
        blob = nonce + ct + self._tag(nonce, ct)
        return _SEAL_VERSION.decode() + "." + base64.urlsafe_b64encode(blob).decode()

    def open(self, sealed: str) -> str:
        """The plaintext; ValueError if the value was tampered with or sealed under another secret."""
        version, _, body = sealed.partition(".")
        try:
            blob = base64.urlsafe_b64decode(body.encode())
        except ValueError:
            raise ValueError("sealed value is not valid base64") from None
        if version.encode() != _SEAL_VERSION or len(blob) < _NONCE + _TAG:
            raise ValueError("unknown sealed value format")
        nonce, ct, tag = blob[:_NONCE], blob[_NONCE:-_TAG], blob[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(nonce, ct)):
            raise ValueError("sealed value failed authentication (tampered, or another server secret)")
        return _xor_stream(self._enc, nonce, ct).decode()


def load_or_create_secret(
    data_dir: Path,
    filename: str,
    from_env: str | None,
    make: Callable[[], str] = lambda: secrets.token_urlsafe(32),
) -> bytes:
    """``from_env`` if set; else ``<data_dir>/<filename>``, created once with mode 0600.

    O_EXCL makes concurrent first starts (several workers) agree on one secret: the loser reads the
    winner's file, waiting briefly in case the winner has created but not yet written it.
    Runs at start-up only (blocking file IO is fine there).
    """
    if from_env:
        return from_env.encode()
    path = data_dir / filename
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds secrets and the database
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    value = make()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    log.warning("generated %s (mode 0600); back it up with the database", path.resolve())
    return value.encode()


def _read_secret(path: Path, wait: float = 2.0) -> bytes:
    until = time.monotonic() + wait
    while True:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value.encode()
        if time.monotonic() > until:
            raise RuntimeError(f"{path} is empty: delete it to generate a new secret")
        time.sleep(0.02)
