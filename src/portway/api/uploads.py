"""Multipart uploads for the media routes: files go straight to disk, are capped, and are always removed.

Parsing is Starlette's (python-multipart underneath) with its limits on files, fields and text-field size;
the one change is where a file part is written: Starlette spools parts into a `SpooledTemporaryFile`, which
has no path once it rolls over, and providers need a real path (faster-whisper opens it, an upstream gets
it streamed from disk). So each file part is written to a named file in a directory of its own per request
(`<data dir>/uploads/<random>/`), through Starlette's threadpool writes, never whole in memory.

The whole body is capped at `server.max_upload_bytes` (a declared Content-Length at once, a chunked body as
it arrives: 413). The request's directory is removed when the `multipart_form` block ends, however it
ends: the answer was sent, an error, or the client went away mid-upload (Starlette raises ClientDisconnect,
or the task is cancelled).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from portway.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from portway.providers.media import Upload

# The routes whose bodies may be multipart uploads: capped at max_upload_bytes, not max_body_bytes
# (POST /v1/videos takes JSON or multipart with an input_reference image).
UPLOAD_PATHS = ("/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/videos")
MAX_FILES = 16  # image edits take several images and a mask; nothing takes more
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024  # a text field (a prompt); files are not bounded by this, only by the body cap


@dataclass(slots=True)
class Form:
    """A parsed multipart body: text fields (a repeated name gives a list) and files on disk."""

    fields: dict[str, str | list[str]] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)
    size: int = 0  # bytes of the whole body

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value[-1] if isinstance(value, list) else value

    def file(self, *names: str) -> list[Upload]:
        return [f for f in self.files if f.field in names]


class _DiskParser(MultiPartParser):
    """Starlette's multipart parser, writing each file part to a named file in `directory`."""

    def __init__(self, request: Request, stream: AsyncGenerator[bytes, None], directory: Path) -> None:
        super().__init__(
            request.headers,
            stream,
            max_files=MAX_FILES,
            max_fields=MAX_FIELDS,
            max_part_size=MAX_FIELD_BYTES,
        )
        self.directory = directory
        self.opened: list[IO[bytes]] = []

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:
            upload.file.close()  # the empty spool Starlette made: nothing was written to it yet
            disk = tempfile.NamedTemporaryFile(dir=self.directory, delete=False)  # noqa: SIM115
            self.opened.append(disk)
            upload.file = disk  # type: ignore[assignment]  # not a SpooledTemporaryFile: UploadFile writes it in the threadpool


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit))
        yield chunk


def _too_large(limit: int) -> str:
    return f"Upload is larger than server.max_upload_bytes ({limit} bytes)"


def _check_request(request: Request, limit: int) -> None:
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"This endpoint takes multipart/form-data, not {ctype.split(';')[0] or 'an untyped body'}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(limit))


def _collect(items: list[tuple[str, str | UploadFile]]) -> Form:
    form = Form()
    for name, value in items:
        if isinstance(value, UploadFile):
            path = Path(getattr(value.file, "name", ""))
            ctype = (value.content_type or "application/octet-stream").split(";")[0].strip().lower()
            form.files.append(Upload(name, value.filename or "", ctype, path, value.size or 0))
            continue
        old = form.fields.get(name)
        if old is None:
            form.fields[name] = value
        elif isinstance(old, list):
            old.append(value)
        else:
            form.fields[name] = [old, value]
    return form


def _new_directory(root: Path) -> Path:
    """A fresh directory for one request's files (metadata operations only: fine on the event loop)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="req-", dir=root))


@asynccontextmanager
async def multipart_form(request: Request, *, limit: int, root: Path) -> AsyncIterator[Form]:
    """Parse the request's multipart body into a `Form` whose files exist until the block ends."""
    _check_request(request, limit)
    directory = _new_directory(root)
    try:
        parser = _DiskParser(request, _capped(request, limit), directory)
        try:
            data = await parser.parse()
        except MultiPartException as exc:
            raise ValidationError(f"Invalid multipart body: {exc.message}") from None
        finally:
            for f in parser.opened:
                f.close()  # written and flushed: providers open them by path
        form = _collect(list(data.multi_items()))
        form.size = sum(f.size for f in form.files) + sum(
            len(v) if isinstance(v, str) else sum(map(len, v)) for v in form.fields.values()
        )
        yield form
    finally:
        # Synchronously: after a disconnect an await here could be cancelled again and leave the files.
        shutil.rmtree(directory, ignore_errors=True)


STALE_UPLOAD_SECONDS = 3600.0


def sweep_stale(root: Path, older_than: float = STALE_UPLOAD_SECONDS) -> int:
    """Remove request directories a killed worker left behind (start-up only: blocking IO is fine there).

    Only directories untouched for `older_than` go: another worker may be receiving an upload right now.
    """
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for entry in root.iterdir():
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed
