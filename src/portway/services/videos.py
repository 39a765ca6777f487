"""Video jobs (POST /v1/videos and friends): OpenAI's job shape, kept in the database, run in the background.

A job is created `queued` and run by the worker that took the request, at most `videos.max_concurrent` at a
time per worker. Running it is one media call (`MediaService.run(Task.VIDEO, ...)`: limits, routing,
fallbacks, cost and the usage record are the same as every media request's), whose video bytes go to the
file store; `GET /v1/videos/{id}/content` streams them until `videos.keep_seconds` after completion.

Restarts: a worker holds a lease on each job it has (renewed every `lease_seconds / 3`). Stopping cleanly, it
hands them back and the next worker to start (or a running one, at its next tick) takes them over and runs
them again from the start (the upstream call is made anew: an upstream job cannot be re-attached to). A
worker that dies lets its leases run out, with the same result `lease_seconds` later. A job interrupted more
than `videos.max_runs` times is failed (`job_interrupted`), as is one whose input image is gone.

Ownership: a job belongs to the principal that created it; any other caller gets 404 as if it did not exist,
except an admin (the master key, an admin user), who sees and lists every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from portway.config import VideosConfig
from portway.errors import ModelNotSupportedForEndpoint, NotFound, PortwayError, ValidationError
from portway.identity.auth import Principal
from portway.limits.admission import Admission
from portway.limits.spec import LimitSpec
from portway.providers.base import Provider
from portway.providers.media import Task, Upload
from portway.routing.router import Router
from portway.services.chat import RequestContext
from portway.stores.files import FileStore, StoredFile
from portway.stores.sql.videos import ACTIVE, VideoJobRow, VideoJobStore

log = logging.getLogger("portway.videos")

DEFAULT_MODEL = "sora-2"  # OpenAI's default: an alias of that name makes SDK calls without `model` work
DEFAULT_SECONDS = "4"
DEFAULT_SIZE = "720x1280"
MAX_PROMPT = 32_000
MAX_SECONDS = 600
_SIZE_RE = re.compile(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}")
_IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
}
_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4"}
_OWN_FIELDS = frozenset({"model", "prompt", "seconds", "size", "input_reference"})


class MediaReplyLike(Protocol):
    """services.media.MediaReply, as far as a video job reads it."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def body(self) -> bytes | None: ...
    @property
    def stream(self) -> AsyncIterator[bytes] | None: ...


MediaRun = Callable[[Task, str, dict[str, Any], list[Upload], RequestContext], Awaitable[MediaReplyLike]]


# -- the job object ------------------------------------------------------------------------------------------


def render(job: VideoJobRow) -> dict[str, Any]:
    """A job in OpenAI's `video` shape."""
    error = None
    if job.status == "failed":
        error = {"code": job.error_code or "internal_error", "message": job.error_message or "failed"}
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "created_at": int(job.created_at),
        "completed_at": None if job.completed_at is None else int(job.completed_at),
        "expires_at": None if job.expires_at is None else int(job.expires_at),
        "prompt": job.prompt,
        "seconds": job.seconds,
        "size": job.size,
        "remixed_from_video_id": None,
        "error": error,
    }


def _caller(principal: Principal, client_ip: str | None) -> dict[str, Any]:
    """What a job runs as, stored with it: a job resumed after a restart is limited like the original."""
    return {
        "id": principal.id,
        "is_admin": principal.is_admin,
        "key_id": principal.key_id,
        "user_id": principal.user_id,
        "allowed_models": None if principal.allowed_models is None else list(principal.allowed_models),
        "key_limits": None if principal.key_limits is None else dataclasses.asdict(principal.key_limits),
        "user_limits": None if principal.user_limits is None else dataclasses.asdict(principal.user_limits),
        "client_ip": client_ip,
    }


def _principal(caller: Mapping[str, Any]) -> Principal:
    models = caller.get("allowed_models")
    key_limits, user_limits = caller.get("key_limits"), caller.get("user_limits")
    return Principal(
        id=str(caller["id"]),
        is_admin=bool(caller.get("is_admin")),
        key_id=caller.get("key_id"),
        user_id=caller.get("user_id"),
        allowed_models=None if models is None else tuple(models),
        key_limits=None if key_limits is None else LimitSpec(**key_limits),
        user_limits=None if user_limits is None else LimitSpec(**user_limits),
    )


def _error_of(err: PortwayError) -> tuple[str, str]:
    body = err.to_dict()["error"]  # the code as the client would see it (an upstream's 400 keeps its own)
    return str(body.get("code") or err.code), str(body.get("message") or err.message)


# -- request validation --------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class VideoRequest:
    model: str
    prompt: str
    seconds: str
    size: str
    extra: dict[str, Any]  # other fields, passed on to the upstream as they are

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> VideoRequest:
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError("prompt: a non-empty string is required", param="prompt")
        if len(prompt) > MAX_PROMPT:
            raise ValidationError(f"prompt: at most {MAX_PROMPT} characters", param="prompt")
        model = fields.get("model", DEFAULT_MODEL)
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("model: a non-empty string is required", param="model")
        seconds = str(fields.get("seconds", DEFAULT_SECONDS)).strip()
        if not (seconds.isascii() and seconds.isdigit()) or not 1 <= int(seconds) <= MAX_SECONDS:
            raise ValidationError(f"seconds: a whole number of seconds, 1 to {MAX_SECONDS}", param="seconds")
        size = fields.get("size", DEFAULT_SIZE)
        if not isinstance(size, str) or not _SIZE_RE.fullmatch(size):
            raise ValidationError("size: WIDTHxHEIGHT in pixels, like 1280x720", param="size")
        extra = {k: v for k, v in fields.items() if k not in _OWN_FIELDS}
        if isinstance(fields.get("input_reference"), dict):  # OpenAI's JSON form: a reference by URL/id
            extra["input_reference"] = fields["input_reference"]
        return cls(model.strip(), prompt, str(int(seconds)), size, extra)

    def payload(self) -> dict[str, Any]:
        return {
            **self.extra,
            "model": self.model,
            "prompt": self.prompt,
            "seconds": self.seconds,
            "size": self.size,
        }


def _check_image(upload: Upload) -> None:
    magic = _IMAGE_MAGIC.get(upload.content_type)
    if magic is None:
        raise ValidationError(
            "input_reference: an image/png, image/jpeg or image/webp file is required",
            param="input_reference",
        )
    with open(upload.path, "rb") as f:  # a few bytes: the content is what it claims
        head = f.read(16)
    if not head.startswith(magic) or (upload.content_type == "image/webp" and head[8:12] != b"WEBP"):
        raise ValidationError(
            f"input_reference: not a valid {upload.content_type} file", param="input_reference"
        )


async def _chunks(path: Any, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


# -- the service ---------------------------------------------------------------------------------------------


class VideoService:
    def __init__(
        self,
        store: VideoJobStore,
        files: FileStore,
        run_media: MediaRun,
        router: Router,
        admission: Admission,
        providers: Mapping[str, Provider],
        cfg: VideosConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.files = files
        self.run_media = run_media
        self.router = router
        self.admission = admission
        self.providers = providers
        self.cfg = cfg
        self.clock = clock
        self.owner = secrets.token_hex(8)  # this worker, as a lease holder
        self._slots = asyncio.Semaphore(cfg.max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None

    # -- requests --------------------------------------------------------------------------------------------

    def _preflight(self, principal: Principal, model: str) -> None:
        """Fail the request now, not the job later, for what is known now: the model and the caller's right
        to it. (Limits and budgets are checked when the job runs, like any media call.)"""
        self.admission.check_models(principal, [model])
        targets = self.router.plan(model)
        if targets and not any(Task.VIDEO in self.providers[t.provider].tasks for t in targets):
            raise ModelNotSupportedForEndpoint(
                f"The model {model!r} cannot generate videos (no target of it serves /v1/videos)",
                param="model",
            )

    async def create(
        self, principal: Principal, fields: Mapping[str, Any], upload: Upload | None, client_ip: str | None
    ) -> dict[str, Any]:
        req = VideoRequest.parse(fields)
        self._preflight(principal, req.model)
        input_file = input_name = None
        if upload is not None:
            await asyncio.to_thread(_check_image, upload)
            # Copied out of the request's upload dir: the job outlives the request (and restarts).
            input_file = await self.files.save_stream(
                _chunks(upload.path),
                upload.content_type,
                principal.id,
                _SUFFIX.get(upload.content_type, ""),
                keep=self.cfg.keep_seconds,
            )
            input_name = upload.filename[:256] or "input" + _SUFFIX.get(upload.content_type, "")
        now = self.clock()
        job = VideoJobRow(
            id="video_" + secrets.token_urlsafe(18),
            principal=principal.id,
            caller=_caller(principal, client_ip),
            model=req.model,
            status="queued",
            prompt=req.prompt,
            seconds=req.seconds,
            size=req.size,
            payload=req.payload(),
            created_at=now,
            input_file=input_file,
            input_name=input_name,
            lease_owner=self.owner,
            lease_until=now + self.cfg.lease_seconds,
        )
        try:
            await self.store.insert(job)
        except BaseException:
            if input_file is not None:
                self.files.delete(input_file)
            raise
        self._launch(job.id)
        return render(job)

    async def _visible(self, principal: Principal, job_id: str) -> VideoJobRow:
        job = await self.store.get(job_id) if len(job_id) <= 64 else None
        if job is None or not (principal.is_admin or job.principal == principal.id):
            raise NotFound(f"No video with id {job_id!r}", param="video_id")
        return job

    async def retrieve(self, principal: Principal, job_id: str) -> dict[str, Any]:
        return render(await self._visible(principal, job_id))

    async def content(self, principal: Principal, job_id: str) -> StoredFile:
        job = await self._visible(principal, job_id)
        if job.status != "completed" or job.result_file is None:
            raise NotFound(
                f"The video {job_id!r} has no content (its status is {job.status})", param="video_id"
            )
        stored = await self.files.aget(job.result_file)
        if stored is None:
            raise NotFound(f"The content of video {job_id!r} has expired", param="video_id")
        return stored

    async def list_jobs(
        self, principal: Principal, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        owner = None if principal.is_admin else principal.id
        rows, more = await self.store.page(owner, after, limit, order == "asc")
        data = [render(r) for r in rows]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def delete(self, principal: Principal, job_id: str) -> dict[str, Any]:
        job = await self._visible(principal, job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        await self.store.delete(job_id)
        for file_id in (job.input_file, job.result_file):
            if file_id is not None:
                self.files.delete(file_id)
        return {"id": job_id, "object": "video.deleted", "deleted": True}

    # -- running jobs ----------------------------------------------------------------------------------------

    def _launch(self, job_id: str) -> None:
        if job_id in self._tasks:
            return
        task = asyncio.create_task(self._run(job_id), name=f"portway-video-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _run(self, job_id: str) -> None:
        try:
            async with self._slots:
                job = await self.store.start_run(job_id, self.owner, self.clock())
                if job is not None:
                    await self._execute(job)
        except asyncio.CancelledError:
            raise  # shutting down (the lease is handed back) or the job was deleted
        except Exception:
            log.exception("video job %s: could not be run", job_id)

    async def _execute(self, job: VideoJobRow) -> None:
        if job.runs > self.cfg.max_runs:
            times = job.runs - 1
            await self._fail(
                job, "job_interrupted", f"The job was interrupted {times} times and not run again"
            )
            return
        uploads: list[Upload] = []
        if job.input_file is not None:
            stored = await self.files.aget(job.input_file)
            if stored is None:
                await self._fail(job, "input_expired", "The job's input_reference image is no longer stored")
                return
            name = job.input_name or "input"
            uploads.append(Upload("input_reference", name, stored.content_type, stored.path, stored.size))
        caller = job.caller
        ctx = RequestContext(job.id, _principal(caller), time.monotonic(), caller.get("client_ip"))
        try:
            reply = await self.run_media(Task.VIDEO, job.model, dict(job.payload), uploads, ctx)
            file_id = await self._keep(reply, job)
        except PortwayError as err:
            await self._fail(job, *_error_of(err))
            return
        except Exception:
            log.exception("video job %s failed", job.id)
            await self._fail(
                job, "internal_error", "Video generation failed inside the gateway (see its log)"
            )
            return
        now = self.clock()
        done = await self.store.update(
            job.id,
            self.owner,
            status="completed",
            progress=100,
            provider=reply.provider,
            served_model=reply.model,
            result_file=file_id,
            completed_at=now,
            expires_at=now + self.cfg.keep_seconds,
        )
        if not done:  # deleted meanwhile, or taken over by another worker: this result is nobody's
            self.files.delete(file_id)
            return
        self._drop_input(job)
        log.info("video job %s completed by %s/%s", job.id, reply.provider, reply.model)

    async def _keep(self, reply: MediaReplyLike, job: VideoJobRow) -> str:
        content_type = reply.content_type or "video/mp4"
        suffix = _SUFFIX.get(content_type, "")
        keep = self.cfg.keep_seconds
        if reply.stream is not None:
            stream = reply.stream
            try:
                return await self.files.save_stream(stream, content_type, job.principal, suffix, keep=keep)
            finally:
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    await closer()
        if reply.body is None:
            raise PortwayError("The upstream answered without a video")
        body = reply.body
        return await asyncio.to_thread(self.files.save, body, content_type, job.principal, suffix, keep)

    async def _fail(self, job: VideoJobRow, code: str, message: str) -> None:
        log.info("video job %s failed: %s", job.id, code)
        now = self.clock()
        if await self.store.update(
            job.id, self.owner, status="failed", error_code=code[:64], error_message=message, completed_at=now
        ):
            self._drop_input(job)

    def _drop_input(self, job: VideoJobRow) -> None:
        if job.input_file is not None:
            self.files.delete(job.input_file)

    # -- leases ----------------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Renew this worker's leases, then take over jobs nobody holds, as far as there are free slots."""
        now = self.clock()
        until = now + self.cfg.lease_seconds
        await self.store.renew(self.owner, until)
        free = self.cfg.max_concurrent - len(self._tasks)
        if free <= 0:
            return
        for job_id in await self.store.unclaimed(now, free):
            if await self.store.claim(job_id, self.owner, now, until):
                log.info("video job %s taken over by this worker", job_id)
                self._launch(job_id)

    async def _tick_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("video job lease renewal failed")
            await asyncio.sleep(self.cfg.lease_seconds / 3)

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="portway-video-leases")

    async def aclose(self) -> None:
        """Stop running jobs and hand them back, so the next worker to start runs them at once."""
        tasks = [t for t in (self._ticker, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._ticker = None
        handed = await self.store.release(self.owner)
        if handed:
            log.info("handed back %d unfinished video job(s)", handed)


__all__ = ["ACTIVE", "VideoRequest", "VideoService", "render"]
