"""Generated files kept in the data dir (image `url` answers, video results), served at signed, expiring URLs.

Layout: ``<data dir>/files`` (mode 0700) holds, per file, ``<id>`` (the bytes, 0600) and ``<id>.json``
(content type, owner, suffix, expiry; 0600). The meta file's mtime *is* the file's expiry, so the sweeper
decides with one `stat` per file (no reads); a file past its expiry is refused even before it is swept.

A file id is 24 random bytes, URL-safe base64 (192 bits): unguessable, and checked against a strict pattern
before it ever reaches a path, so no id can name anything outside the directory.

A signed path is ``/v1/files/<id>/content?expires=<unix>&signature=<hex>`` with
``signature = HMAC-SHA256(key, "<id>.<expires>")``; the key is derived from the server secret by the
runtime (no secret of its own), so changing PORTWAY_SECRET_KEY invalidates every URL handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger("portway.files")

_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")  # token_urlsafe(24): exactly 32 characters
_SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,10}")
_PART = ".part"  # bytes being written; renamed into place once complete
_META = ".json"
_CHUNK = 256 * 1024
_ORPHAN_AGE = 3600.0  # a .part older than this was left by a crash mid-write
SWEEP_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    path: Path
    content_type: str
    owner: str
    suffix: str
    size: int
    expires_at: float


def valid_id(file_id: str) -> bool:
    return _ID_RE.fullmatch(file_id) is not None


class FileStore:
    def __init__(
        self,
        root: Path,
        key: bytes,
        *,
        url_ttl: float = 3600.0,
        keep: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._key = key
        self.url_ttl = url_ttl
        self.keep = url_ttl if keep is None else keep
        self.clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)

    # -- writing ------------------------------------------------------------------------------------------

    def save(
        self, data: bytes, content_type: str, owner: str, suffix: str = "", keep: float | None = None
    ) -> str:
        """Store `data`; its id. Blocking file IO (small answers, an image); `save_stream` for big ones."""
        file_id, part = self._begin()
        try:
            with open(part, "wb") as f:
                f.write(data)
            self._commit(file_id, part, content_type, owner, suffix, keep)
        except BaseException:
            _unlink(part)
            raise
        return file_id

    async def save_stream(
        self,
        chunks: AsyncIterator[bytes],
        content_type: str,
        owner: str,
        suffix: str = "",
        keep: float | None = None,
    ) -> str:
        """Store the chunks as they come (a video: never whole in memory); writes run off the event loop."""
        file_id, part = await asyncio.to_thread(self._begin)
        try:
            f = await asyncio.to_thread(open, part, "wb")
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(f.write, chunk)
            finally:
                await asyncio.to_thread(f.close)
            await asyncio.to_thread(self._commit, file_id, part, content_type, owner, suffix, keep)
        except BaseException:
            _unlink(part)
            raise
        return file_id

    def _begin(self) -> tuple[str, Path]:
        self._ensure_root()
        file_id = secrets.token_urlsafe(24)
        part = self.root / (file_id + _PART)
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return file_id, part

    def _commit(
        self, file_id: str, part: Path, content_type: str, owner: str, suffix: str, keep: float | None
    ) -> None:
        if suffix and not _SUFFIX_RE.fullmatch(suffix):
            raise ValueError(f"file suffix {suffix!r} must look like '.png'")
        expires_at = self.clock() + (self.keep if keep is None else keep)
        meta = orjson.dumps({"content_type": content_type, "owner": owner, "suffix": suffix})
        meta_path = self.root / (file_id + _META)
        fd = os.open(meta_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(meta)
        os.utime(meta_path, (expires_at, expires_at))  # the expiry, read back with one stat
        os.replace(part, self.root / file_id)

    # -- reading ------------------------------------------------------------------------------------------

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None if the id is malformed, unknown or past its expiry (blocking: a stat, a read)."""
        if not valid_id(file_id):
            return None
        path, meta_path = self.root / file_id, self.root / (file_id + _META)
        try:
            expires_at = meta_path.stat().st_mtime
            if expires_at <= self.clock():
                return None
            meta = orjson.loads(meta_path.read_bytes())
            size = path.stat().st_size
        except (OSError, orjson.JSONDecodeError):
            return None
        return StoredFile(
            file_id,
            path,
            str(meta["content_type"]),
            str(meta["owner"]),
            str(meta["suffix"]),
            size,
            expires_at,
        )

    async def aget(self, file_id: str) -> StoredFile | None:
        return await asyncio.to_thread(self.get, file_id)

    async def stream(self, file: StoredFile) -> AsyncIterator[bytes]:
        """The file's bytes in chunks, read off the event loop. The file is opened once: a sweep while it is
        being sent does not cut it short."""
        f = await asyncio.to_thread(open, file.path, "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, _CHUNK):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)

    def delete(self, file_id: str) -> None:
        if valid_id(file_id):
            _unlink(self.root / file_id)
            _unlink(self.root / (file_id + _META))

    # -- signing ------------------------------------------------------------------------------------------

    def _signature(self, file_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{file_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_path(self, file_id: str, ttl: float | None = None) -> str:
        """``/v1/files/<id>/content?expires=<unix>&signature=<hex>``, valid for `ttl` (url_ttl_seconds)."""
        expires = int(self.clock() + (self.url_ttl if ttl is None else ttl))
        return f"/v1/files/{file_id}/content?expires={expires}&signature={self._signature(file_id, expires)}"

    def verify(self, file_id: str, expires: str | None, signature: str | None) -> bool:
        """True for an unexpired URL this server signed. The comparison is constant-time, and every way to
        fail answers the same False (a caller learns nothing about which part was wrong)."""
        if (
            not valid_id(file_id)
            or not expires
            or not signature
            or not (expires.isascii() and expires.isdigit())
            or len(expires) > 12
        ):
            return False
        expected = self._signature(file_id, int(expires))
        good = hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
        return good and int(expires) > self.clock()

    # -- sweeping -----------------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Delete expired files (and writes a crash left behind); how many files were removed."""
        now = self.clock()
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if name.endswith(_META) and mtime <= now:
                self.delete(name[: -len(_META)])
                removed += 1
            elif name.endswith(_PART) and mtime < now - _ORPHAN_AGE:
                _unlink(Path(entry.path))
            elif valid_id(name) and not os.path.exists(entry.path + _META) and mtime < now - _ORPHAN_AGE:
                _unlink(Path(entry.path))  # bytes whose meta is gone (a crash between two unlinks)
        return removed

    async def _sweep_loop(self, interval: float) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep)
                if removed:
                    log.info("swept %d expired file(s)", removed)
            except Exception:
                log.exception("file sweep failed")
            await asyncio.sleep(interval)

    def start(self, interval: float = SWEEP_INTERVAL) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_loop(interval), name="portway-file-sweeper")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
