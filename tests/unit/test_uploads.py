"""api/uploads.multipart_form: Starlette's parser with files written to named files on disk, a hard cap on
the body, and the request's directory removed however the request ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from portway.api.uploads import MAX_FILES, multipart_form
from portway.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError

BOUNDARY = "xYzZy"


def left(root: Path) -> list[str]:
    """What the uploads root still holds (a sync helper: the checks run inside async tests)."""
    return os.listdir(root) if os.path.isdir(root) else []


def part(name: str, value: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(
    chunks: list[bytes],
    *,
    ctype: str = f"multipart/form-data; boundary={BOUNDARY}",
    length: int | None = None,
    disconnect: bool = False,
) -> Request:
    headers = [(b"content-type", ctype.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    messages: Iterator[dict[str, Any]] = iter(
        [
            *(
                {"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
                for i, c in enumerate(chunks)
            ),
            *([{"type": "http.disconnect"}] if disconnect else []),
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope, receive)


async def test_fields_and_files_on_disk_then_removed(tmp_path: Path) -> None:
    image = bytes(range(256)) * 300  # ~77 KB: several chunks of the parser
    raw = body(
        part("prompt", b"a red fox"),
        part("timestamp_granularities[]", b"word"),
        part("timestamp_granularities[]", b"segment"),
        part("image[]", image, "a.png", "image/png"),
        part("image[]", b"second", "b.png", "image/png"),
    )
    half = len(raw) // 2
    async with multipart_form(request([raw[:half], raw[half:]]), limit=1 << 20, root=tmp_path) as form:
        assert form.text("prompt") == "a red fox"
        assert form.fields["timestamp_granularities[]"] == ["word", "segment"]
        first, second = form.file("image[]")
        assert (first.filename, first.content_type, first.size) == ("a.png", "image/png", len(image))
        assert first.path.read_bytes() == image  # a real path: providers open it by name
        assert second.path.read_bytes() == b"second"
        assert form.size >= len(image)
        directory = first.path.parent
        assert directory.parent == tmp_path
    assert not directory.exists()
    assert left(tmp_path) == []


async def test_removed_when_the_block_raises(tmp_path: Path) -> None:
    raw = body(part("file", b"abc", "a.wav", "audio/wav"))
    with pytest.raises(RuntimeError):
        async with multipart_form(request([raw]), limit=1 << 20, root=tmp_path) as form:
            assert form.files[0].path.exists()
            raise RuntimeError("the upstream call failed")
    assert left(tmp_path) == []


async def test_removed_when_the_client_leaves_mid_upload(tmp_path: Path) -> None:
    raw = body(part("file", b"\1" * 100_000, "a.wav", "audio/wav"))
    with pytest.raises(ClientDisconnect):
        async with multipart_form(request([raw[:60_000]], disconnect=True), limit=1 << 20, root=tmp_path):
            pytest.fail("a half-sent body was parsed")
    assert left(tmp_path) == []


async def test_a_chunked_body_over_the_cap_is_refused(tmp_path: Path) -> None:
    raw = body(part("file", b"\1" * 50_000, "a.wav", "audio/wav"))
    chunks = [raw[i : i + 8192] for i in range(0, len(raw), 8192)]
    with pytest.raises(PayloadTooLarge, match="max_upload_bytes"):
        async with multipart_form(request(chunks), limit=20_000, root=tmp_path):
            pytest.fail("parsed past the cap")
    assert left(tmp_path) == []


async def test_a_declared_length_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        async with multipart_form(request([b"never read"], length=20_001), limit=20_000, root=tmp_path):
            pytest.fail("read a body declared too large")
    assert left(tmp_path) == []


async def test_not_multipart_is_415(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMediaType):
        async with multipart_form(request([b"{}"], ctype="application/json"), limit=1 << 20, root=tmp_path):
            pytest.fail("parsed JSON as multipart")


async def test_starlettes_limits_hold(tmp_path: Path) -> None:
    many = body(*(part("image[]", b"x", f"{i}.png", "image/png") for i in range(MAX_FILES + 1)))
    with pytest.raises(ValidationError, match="Too many files"):
        async with multipart_form(request([many]), limit=1 << 20, root=tmp_path):
            pytest.fail("took more files than MAX_FILES")
    broken = f"--{BOUNDARY}\r\nno headers at all".encode()
    with pytest.raises(ValidationError):
        async with multipart_form(request([broken]), limit=1 << 20, root=tmp_path):
            pytest.fail("parsed a broken body")
    assert left(tmp_path) == []


def test_sweep_removes_only_stale_request_directories(tmp_path: Path) -> None:
    import time

    from portway.api.uploads import sweep_stale

    old, fresh = tmp_path / "req-old", tmp_path / "req-fresh"
    for d in (old, fresh):
        d.mkdir()
        (d / "part").write_bytes(b"x" * 10)
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    assert sweep_stale(tmp_path) == 1
    assert not old.exists() and fresh.exists()
    assert sweep_stale(tmp_path / "missing") == 0
