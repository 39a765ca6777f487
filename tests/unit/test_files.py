"""The signed-file store (stores/files.py) and its route (api/files.py): signing, expiry, tampering,
path traversal, permissions and the sweeper."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from portway.api import files as files_api
from portway.app import _portway_error
from portway.config import ConfigError, parse_config
from portway.errors import PortwayError
from portway.identity.crypto import derive_key
from portway.stores.files import FileStore, valid_id

KEY = derive_key(b"server-secret", "files")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> FileStore:
    return FileStore(tmp_path / "files", KEY, url_ttl=600, keep=900, clock=clock)


def _parts(path: str) -> tuple[str, str, str]:
    url = urlsplit(path)
    q = parse_qs(url.query)
    file_id = url.path.removeprefix("/v1/files/").removesuffix("/content")
    return file_id, q["expires"][0], q["signature"][0]


def test_save_keeps_bytes_type_and_owner_private(store: FileStore) -> None:
    file_id = store.save(b"\x89PNG data", "image/png", "key:abc", ".png")
    assert valid_id(file_id)
    got = store.get(file_id)
    assert got is not None
    assert (got.content_type, got.owner, got.suffix, got.size) == ("image/png", "key:abc", ".png", 9)
    assert got.path.read_bytes() == b"\x89PNG data"
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    for name in os.listdir(store.root):
        assert stat.S_IMODE((store.root / name).stat().st_mode) == 0o600, name
    assert store.save(b"x", "image/png", "o") != file_id  # random ids


def test_signed_path_verifies_and_expires(store: FileStore, clock: Clock) -> None:
    file_id = store.save(b"img", "image/png", "o")
    path = store.signed_path(file_id)
    assert path.startswith(f"/v1/files/{file_id}/content?expires=")
    fid, expires, signature = _parts(path)
    assert int(expires) == int(clock.now + 600)
    assert len(signature) == 64 and int(signature, 16) >= 0  # hex HMAC-SHA256
    assert store.verify(fid, expires, signature)
    clock.now += 599
    assert store.verify(fid, expires, signature)
    clock.now += 2
    assert not store.verify(fid, expires, signature)


def test_any_tampering_is_refused(store: FileStore, tmp_path: Path) -> None:
    file_id = store.save(b"img", "image/png", "o")
    other = store.save(b"img2", "image/png", "o")
    fid, expires, signature = _parts(store.signed_path(file_id))
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not store.verify(fid, expires, flipped)
    assert not store.verify(other, expires, signature)  # a signature is for one file
    assert not store.verify(fid, str(int(expires) + 3600), signature)  # a longer life is not signed
    assert not store.verify(fid, expires, signature.upper())
    assert not store.verify(fid, expires, "")
    assert not store.verify(fid, None, signature)
    assert not store.verify(fid, "12x", signature)
    assert not store.verify(fid, "\u00b2", signature)  # a unicode "digit"
    other_key = FileStore(tmp_path / "files", derive_key(b"another-secret", "files"), clock=store.clock)
    assert not other_key.verify(fid, expires, signature)


@pytest.mark.parametrize(
    "bad",
    ["../secret.key", "..", "", "a" * 31, "a" * 33, "a/" + "b" * 30, "%2e%2e" + "a" * 26, "a" * 31 + "\x00"],
)
def test_ids_outside_the_pattern_never_reach_a_path(store: FileStore, bad: str) -> None:
    (store.root.parent / "secret.key").write_text("top secret")
    assert not valid_id(bad)
    assert store.get(bad) is None
    assert not store.verify(bad, "9999999999", "0" * 64)
    store.delete(bad)  # a no-op, never an unlink outside the directory
    assert (store.root.parent / "secret.key").exists()


def test_expired_files_are_refused_then_swept(store: FileStore, clock: Clock) -> None:
    short = store.save(b"a", "image/png", "o", keep=10)
    long = store.save(b"b", "image/png", "o")  # keep_seconds: 900
    clock.now += 11
    assert store.get(short) is None  # refused before any sweep
    assert store.get(long) is not None
    assert store.sweep() == 1
    assert sorted(os.listdir(store.root)) == sorted([long, long + ".json"])
    clock.now += 900
    assert store.sweep() == 1
    assert os.listdir(store.root) == []


def test_sweep_removes_writes_a_crash_left(store: FileStore, clock: Clock) -> None:
    file_id = store.save(b"a", "image/png", "o")
    part = store.root / ("x" * 32 + ".part")
    part.write_bytes(b"half")
    os.utime(part, (clock.now - 7200, clock.now - 7200))
    fresh = store.root / ("y" * 32 + ".part")  # being written right now: left alone
    fresh.write_bytes(b"half")
    os.utime(fresh, (clock.now, clock.now))
    store.sweep()
    assert not part.exists() and fresh.exists()
    assert store.get(file_id) is not None


async def test_save_stream_and_stream_round_trip(store: FileStore) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield bytes([i]) * 100_000

    file_id = await store.save_stream(chunks(), "video/mp4", "o", ".mp4")
    got = await store.aget(file_id)
    assert got is not None and got.size == 500_000
    data = b"".join([c async for c in store.stream(got)])
    assert data == b"".join(bytes([i]) * 100_000 for i in range(5))


async def test_a_broken_stream_leaves_nothing(store: FileStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"start"
        raise RuntimeError("upstream went away")

    with pytest.raises(RuntimeError):
        await store.save_stream(broken(), "video/mp4", "o")
    assert os.listdir(store.root) == []


async def test_sweeper_task_deletes_expired_files(store: FileStore, clock: Clock) -> None:
    file_id = store.save(b"a", "image/png", "o", keep=1)
    clock.now += 2
    store.start(interval=0.01)
    try:
        for _ in range(500):
            if not (store.root / file_id).exists():
                break
            await asyncio.sleep(0.01)
        assert not (store.root / file_id).exists()
        assert not (store.root / (file_id + ".json")).exists()
    finally:
        await store.aclose()
    assert store._sweeper is None


def test_config_files_section() -> None:
    cfg = parse_config({})
    assert (cfg.files.url_ttl_seconds, cfg.files.keep_seconds) == (3600.0, None)
    cfg = parse_config({"files": {"url_ttl_seconds": 60, "keep_seconds": 120}})
    assert (cfg.files.url_ttl_seconds, cfg.files.keep_seconds) == (60.0, 120.0)
    with pytest.raises(ConfigError, match="keep_seconds"):
        parse_config({"files": {"url_ttl_seconds": 600, "keep_seconds": 60}})
    with pytest.raises(ConfigError, match="url_ttl_seconds"):
        parse_config({"files": {"url_ttl_seconds": 0}})


# -- the route ---------------------------------------------------------------------------------------------


@pytest.fixture
async def http(store: FileStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.runtime = SimpleNamespace(files=store)
    app.include_router(files_api.router)
    app.add_exception_handler(PortwayError, _portway_error)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client:
        yield client


async def test_route_streams_the_file_without_auth(http: httpx.AsyncClient, store: FileStore) -> None:
    body = os.urandom(700_000)
    file_id = store.save(body, "image/webp", "key:1", ".webp")
    resp = await http.get(store.signed_path(file_id))  # no Authorization header
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/webp"
    assert resp.headers["content-length"] == str(len(body))
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.content == body


async def test_route_refuses_bad_urls_alike(http: httpx.AsyncClient, store: FileStore, clock: Clock) -> None:
    file_id = store.save(b"img", "image/png", "o")
    fid, expires, signature = _parts(store.signed_path(file_id))
    bad = [
        f"/v1/files/{fid}/content?expires={expires}&signature={'0' * 64}",
        f"/v1/files/{fid}/content?expires={int(expires) + 1}&signature={signature}",
        f"/v1/files/{fid}/content",
        f"/v1/files/%2e%2e/content?expires={expires}&signature={signature}",  # the id is ".."
    ]
    bodies = set()
    for url in bad:
        resp = await http.get(url)
        assert resp.status_code == 403, url
        assert resp.json()["error"]["code"] == "permission_denied"
        bodies.add(resp.content)
    assert len(bodies) == 1  # no hint which part was wrong
    (store.root.parent / "secret.key").write_text("top secret")
    resp = await http.get(f"/v1/files/..%2Fsecret.key/content?expires={expires}&signature={signature}")
    assert resp.status_code == 404 and b"top secret" not in resp.content  # a "/" never matches the route
    clock.now += 601
    resp = await http.get(f"/v1/files/{fid}/content?expires={expires}&signature={signature}")
    assert resp.status_code == 403 and resp.content in bodies


async def test_route_404_for_a_genuine_url_whose_file_is_gone(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    file_id = store.save(b"img", "image/png", "o")
    path = store.signed_path(file_id)
    store.delete(file_id)
    resp = await http.get(path)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
