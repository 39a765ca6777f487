"""The video job API end to end: a running portway, the fake upstream's OpenAI video jobs, the openai SDK.

Jobs are created, polled and downloaded with the SDK; an image-to-video reference reaches the upstream
as multipart; a failed upstream job says why; jobs are private to their principal; and a job survives a
restart of portway (handed back on a clean stop, taken over after a crash, failed once it was interrupted
too often).
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes import videos as fake_videos
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

UPSTREAM_KEY = "k-video-secret-key-1234"


def _config(up: FakeUpstream, *, rerun_fast: bool = False, **videos: Any) -> dict[str, Any]:
    """`rerun_fast`: a restarted worker's `slow-video` renders at the normal speed. Only the first run has
    to be slow (still rendering when its worker stops); the rerun just has to finish."""
    slow = "vid/fake-video" if rerun_fast else "vid/fake-video-slow"
    return {
        "routing": {"deadline": 20, "backoff_base": 0.01, "backoff_max": 0.05},
        "videos": {"timeout_seconds": 30, "lease_seconds": 3, **videos},
        "providers": {
            "vid": {"type": "openai", "base_url": up.base_url, "api_keys": [UPSTREAM_KEY]},
            # Serves chat only, no video (an Anthropic-type provider: no model to load at start).
            "chat": {"type": "anthropic", "base_url": up.url, "api_keys": ["k-chat"]},
        },
        "models": {
            "sora-2": ["vid/fake-video"],
            "slow-video": [slow],
            "broken-video": ["vid/fake-video-fail"],
            "chat-only": ["chat/claude-fake"],
        },
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("videos"), _config(upstream))
    yield proc
    proc.stop()


def _client(gw: PortwayProcess, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key or gw.master_key, max_retries=0, timeout=20)


def _key(gw: PortwayProcess, name: str) -> str:
    r = httpx.post(gw.url + "/admin/keys", json={"name": name}, headers=gw.headers(), timeout=10)
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll (as a client polls a job) until `check` returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _finished(client: openai.OpenAI, video_id: str, timeout: float = 20.0) -> Any:
    return _until(
        lambda: v if (v := client.videos.retrieve(video_id)).status in ("completed", "failed") else None,
        timeout,
    )


def _usage(gw: PortwayProcess, video_id: str) -> dict[str, Any]:
    """The job's usage record (its request_id is the job's id), once the writer has flushed it."""

    def row() -> dict[str, Any] | None:
        with sqlite3.connect(gw.data_dir / "portway.db") as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM request_log WHERE request_id = ?", (video_id,)).fetchone()
        return None if found is None else dict(found)

    found: dict[str, Any] = _until(row, 10)
    return found


def _png(width: int = 4, height: int = 4) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _creates(up: FakeUpstream, prompt: str) -> list[Any]:
    return [
        r
        for r in up.requests
        if r.path == "/v1/videos" and r.body is not None and r.body.get("prompt") == prompt
    ]


def test_text_to_video_create_retrieve_download_list(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    client = _client(gw)
    job = client.videos.create(model="sora-2", prompt="a cat on a skateboard", seconds="8", size="1280x720")
    assert (job.object, job.status, job.model, job.progress) == ("video", "queued", "sora-2", 0)
    assert (job.seconds, job.size, job.prompt) == ("8", "1280x720", "a cat on a skateboard")
    assert job.id.startswith("video_") and job.error is None and job.completed_at is None

    done = _finished(client, job.id)
    assert done.status == "completed" and done.progress == 100
    assert done.completed_at is not None and done.expires_at is not None
    assert done.expires_at - done.completed_at == 86400  # videos.keep_seconds
    content = client.videos.download_content(job.id)
    assert content.response.headers["content-type"] == "video/mp4"
    assert content.content == fake_videos.video_bytes("a cat on a skateboard")

    (sent,) = _creates(upstream, "a cat on a skateboard")
    assert sent.body["model"] == "fake-video"  # the target's model, not the alias
    assert (sent.body["seconds"], sent.body["size"]) == ("8", "1280x720")
    assert sent.key == UPSTREAM_KEY
    assert job.id in [v.id for v in client.videos.list(limit=100).data]
    record = _usage(gw, job.id)  # one usage path: the media service's
    assert (record["endpoint"], record["status"], record["provider"]) == ("video", 200, "vid")
    assert (record["requested_model"], record["principal"], record["video_seconds"]) == (
        "sora-2",
        "master",
        8.0,
    )


def test_image_to_video_forwards_the_reference(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    client = _client(gw)
    image = _png()
    job = client.videos.create(
        model="sora-2", prompt="animate this", input_reference=("ref.png", image, "image/png")
    )
    assert _finished(client, job.id).status == "completed"
    (sent,) = _creates(upstream, "animate this")
    ref = sent.body["input_reference"]
    assert (ref["filename"], ref["content_type"], ref["size"]) == ("ref.png", "image/png", len(image))
    assert ref["sha256"] == hashlib.sha256(image).hexdigest()


def test_a_bad_reference_image_is_a_400_naming_it(gw: PortwayProcess) -> None:
    client = _client(gw)
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(
            model="sora-2", prompt="x", input_reference=("ref.png", b"not a png", "image/png")
        )
    assert err.value.body["param"] == "input_reference"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(model="sora-2", prompt="x", input_reference=("a.txt", b"hello", "text/plain"))
    assert err.value.body["param"] == "input_reference"  # type: ignore[index]


def test_bad_requests_fail_at_once(gw: PortwayProcess) -> None:
    r = httpx.post(gw.base_url + "/videos", json={"model": "sora-2"}, headers=gw.headers(), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(gw.base_url + "/videos", json={"prompt": "x", "seconds": "ten"}, headers=gw.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "seconds"
    r = httpx.post(gw.base_url + "/videos", json={"prompt": "x", "model": "chat-only"}, headers=gw.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported_for_endpoint"
    r = httpx.post(gw.base_url + "/videos", json={"prompt": "x", "model": "nope"}, headers=gw.headers())
    assert r.status_code == 404
    r = httpx.post(gw.base_url + "/videos", json={"prompt": "x"})
    assert r.status_code == 401


def test_a_failed_job_says_why(gw: PortwayProcess) -> None:
    client = _client(gw)
    job = client.videos.create(model="broken-video", prompt="this will not render")
    done = _finished(client, job.id)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "upstream_error"
    assert fake_videos.FAIL_CODE in done.error.message and fake_videos.FAIL_MESSAGE in done.error.message
    assert UPSTREAM_KEY not in done.error.message and UPSTREAM_KEY[:8] not in done.error.message
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(job.id)
    record = _usage(gw, job.id)
    assert (record["endpoint"], record["status"], record["error_code"]) == ("video", 502, "upstream_error")


def test_jobs_belong_to_their_principal(gw: PortwayProcess) -> None:
    alice, bob = _client(gw, _key(gw, "alice")), _client(gw, _key(gw, "bob"))
    job = alice.videos.create(model="sora-2", prompt="alice's video")
    with pytest.raises(openai.NotFoundError):
        bob.videos.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        bob.videos.download_content(job.id)
    with pytest.raises(openai.NotFoundError):
        bob.videos.delete(job.id)
    assert job.id not in [v.id for v in bob.videos.list().data]
    assert _finished(alice, job.id).status == "completed"
    assert alice.videos.download_content(job.id).content == fake_videos.video_bytes("alice's video")
    assert _client(gw).videos.retrieve(job.id).id == job.id  # the master key sees every job
    deleted = alice.videos.delete(job.id)
    assert deleted.deleted and deleted.id == job.id
    with pytest.raises(openai.NotFoundError):
        alice.videos.retrieve(job.id)


def test_list_pages_like_openai(gw: PortwayProcess) -> None:
    carol = _client(gw, _key(gw, "carol"))
    ids = [carol.videos.create(model="sora-2", prompt=f"page {i}").id for i in range(3)]
    first = carol.videos.list(limit=2, order="asc")
    assert [v.id for v in first.data] == ids[:2] and first.has_more
    rest = carol.videos.list(limit=2, order="asc", after=first.data[-1].id)
    assert [v.id for v in rest.data] == ids[2:] and not rest.has_more
    newest = carol.videos.list(limit=1)
    assert [v.id for v in newest.data] == ids[-1:]
    assert [v.id for v in carol.videos.list(order="asc")] == ids  # the SDK's auto-pagination
    r = httpx.get(gw.base_url + "/videos?limit=0", headers=gw.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


# -- restarts ----------------------------------------------------------------------------------------------


def _start_slow_job(tmp: Path, up: FakeUpstream, prompt: str, **videos: Any) -> tuple[PortwayProcess, str]:
    first = PortwayProcess(tmp / "a", _config(up, **videos))
    job = _client(first).videos.create(model="slow-video", prompt=prompt)
    assert up.wait_for(lambda _: _creates(up, prompt), timeout=10)  # the upstream is rendering it
    return first, job.id


def _restart(tmp: Path, up: FakeUpstream, first: PortwayProcess, **videos: Any) -> PortwayProcess:
    config = _config(up, rerun_fast=True, **videos)
    return PortwayProcess(tmp / "b", config, env={"PORTWAY_DATA_DIR": str(first.data_dir)})


def test_a_job_survives_a_clean_restart(tmp_path: Path, upstream: FakeUpstream) -> None:
    first, video_id = _start_slow_job(tmp_path, upstream, "restart me")
    first.stop()  # SIGTERM mid-job: a clean stop, the worker hands the job back
    second = _restart(tmp_path, upstream, first)
    try:
        client = _client(second)
        done = _finished(client, video_id, timeout=30)
        assert done.status == "completed", done.error
        assert client.videos.download_content(video_id).content == fake_videos.video_bytes("restart me")
        assert len(_creates(upstream, "restart me")) == 2  # run again from the start upstream
        assert "handed back 1 unfinished video job" in first.log()
    finally:
        second.stop()


def test_a_crashed_workers_job_is_taken_over(tmp_path: Path, upstream: FakeUpstream) -> None:
    # The smallest lease (1 s; renewed every 1/3 s) the config allows: the takeover still has to wait it out.
    first, video_id = _start_slow_job(tmp_path, upstream, "crash me", lease_seconds=1)
    first.stop(signal.SIGKILL)  # no hand-back: the lease has to run out
    second = _restart(tmp_path, upstream, first, lease_seconds=1)
    try:
        done = _finished(_client(second), video_id, timeout=30)
        assert done.status == "completed", done.error
        assert "taken over by this worker" in second.log()
    finally:
        second.stop()


def test_a_job_interrupted_too_often_is_failed_with_a_reason(tmp_path: Path, upstream: FakeUpstream) -> None:
    first, video_id = _start_slow_job(tmp_path, upstream, "interrupt me", max_runs=1)
    first.stop()
    second = _restart(tmp_path, upstream, first, max_runs=1)
    try:
        done = _finished(_client(second), video_id, timeout=15)
        assert done.status == "failed" and done.error is not None
        assert done.error.code == "job_interrupted"
        assert "interrupted" in done.error.message
        assert len(_creates(upstream, "interrupt me")) == 1  # not run again
    finally:
        second.stop()
