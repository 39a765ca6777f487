"""OpenAI's video job API on the fake upstream: POST /v1/videos, GET /v1/videos/{id}, GET .../content.

A job's course depends on its model's name: it renders for RENDER_SECONDS (SLOW_SECONDS when the name has
"slow" in it), and one whose name has "fail" in it ends `failed` with FAIL_CODE / FAIL_MESSAGE. The content
is `video_bytes(prompt)`, so a test can compare what portway hands out byte for byte. Faults (`model@500`,
`x-fake-fault`, a bad key) answer the create call as they answer chat.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream

RENDER_SECONDS = 0.6
SLOW_SECONDS = 4.0
FAIL_CODE = "video_generation_failed"
FAIL_MESSAGE = "The fake upstream could not render this video."


def video_bytes(prompt: str) -> bytes:
    """An MP4-looking body of ~192 KiB that depends only on the prompt."""
    seed = hashlib.sha256(prompt.encode()).digest()
    return b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2mp41" + seed * 6144


@dataclass
class FakeVideo:
    id: str
    model: str
    prompt: str
    seconds: str
    size: str
    started: float
    duration: float
    fails: bool
    reference: dict[str, Any] | None

    def state(self) -> tuple[str, int]:
        elapsed = time.monotonic() - self.started
        if elapsed >= self.duration:
            return ("failed" if self.fails else "completed"), 100
        if elapsed < self.duration * 0.1:
            return "queued", 0
        return "in_progress", int(100 * elapsed / self.duration)

    def obj(self) -> dict[str, Any]:
        status, progress = self.state()
        done = status in ("completed", "failed")
        error = {"code": FAIL_CODE, "message": FAIL_MESSAGE} if status == "failed" else None
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
            "created_at": 1700000000,
            "completed_at": 1700000010 if done else None,
            "expires_at": None,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
            "remixed_from_video_id": None,
            "error": error,
        }


class FakeVideos:
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.jobs: dict[str, FakeVideo] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/videos", self.create)
        app.router.add_get("/v1/videos/{video_id}", self.retrieve)
        app.router.add_get("/v1/videos/{video_id}/content", self.content)

    async def _fields(self, request: web.Request) -> dict[str, Any] | None:
        if request.content_type == "multipart/form-data":
            fields: dict[str, Any] = {}
            async for part in await request.multipart():
                if part.filename is not None:  # type: ignore[union-attr]
                    data = await part.read()  # type: ignore[union-attr]
                    fields[part.name or ""] = {  # type: ignore[union-attr]
                        "filename": part.filename,  # type: ignore[union-attr]
                        "content_type": part.headers.get("Content-Type"),
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                else:
                    fields[part.name or ""] = await part.text()  # type: ignore[union-attr]
            return fields
        try:
            parsed = json.loads(await request.read())
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    async def create(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes.upstream import _bearer, _error

        up = self.upstream
        body = await self._fields(request)
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        key = _bearer(request)
        rec = up._new_record(request, up._pick_fault(request, model, key, scripted=True), key, body)
        if body is None or not isinstance(body.get("prompt"), str):
            return await up._send(request, rec, 400, _error(400, key, "prompt is required."))
        name = str(model or "")
        reference = body.get("input_reference")
        job = FakeVideo(
            id="video_" + secrets.token_hex(8),
            model=name,
            prompt=body["prompt"],
            seconds=str(body.get("seconds", "4")),
            size=str(body.get("size", "720x1280")),
            started=time.monotonic(),
            duration=SLOW_SECONDS if "slow" in name else RENDER_SECONDS,
            fails="fail" in name,
            reference=reference if isinstance(reference, dict) else None,
        )
        if rec.fault == "ok":
            self.jobs[job.id] = job
        return await up._guard(request, rec, job.obj(), None)

    def _job(self, request: web.Request) -> FakeVideo | None:
        return self.jobs.get(request.match_info["video_id"])

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes.upstream import _bearer, _error

        up, key = self.upstream, _bearer(request)
        rec = up._new_record(request, "ok", key)
        job = self._job(request)
        if key is None:
            return await up._send(request, rec, 401, _error(401, key))
        if job is None:
            return await up._send(request, rec, 404, _error(404, key, "No such video."))
        return await up._send(request, rec, 200, job.obj())

    async def content(self, request: web.Request) -> web.StreamResponse:
        from tests.fakes.upstream import _bearer, _error

        up, key = self.upstream, _bearer(request)
        rec = up._new_record(request, "ok", key)
        job = self._job(request)
        if key is None:
            return await up._send(request, rec, 401, _error(401, key))
        if job is None or job.state()[0] != "completed":
            return await up._send(request, rec, 404, _error(404, key, "The video is not ready."))
        resp = web.Response(body=video_bytes(job.prompt), headers={"Content-Type": "video/mp4"})
        return await up._finish(request, rec, resp)
