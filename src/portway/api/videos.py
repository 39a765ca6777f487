"""The video job API in OpenAI's shape: create, retrieve, list, download, delete (services/videos.py).

POST /v1/videos takes JSON, or multipart/form-data (what the openai SDK sends) with an optional
`input_reference` image for image-to-video; the image is copied into the file store with the job.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from portway.api.common import authenticate, client_ip, json_response, runtime
from portway.api.uploads import multipart_form
from portway.api.validation import parse_json_object
from portway.errors import UnsupportedMediaType, ValidationError
from portway.providers.media import Upload

router = APIRouter(tags=["videos"])


def _form_upload(files: list[Upload]) -> Upload | None:
    for f in files:
        if f.field != "input_reference":
            raise ValidationError(f"{f.field}: unexpected file field (only input_reference)", param=f.field)
    if len(files) > 1:
        raise ValidationError("input_reference: one image at most", param="input_reference")
    return files[0] if files else None


@router.post("/v1/videos", summary="Create a video job (text-to-video, or image-to-video)")
async def create_video(request: Request) -> Response:
    principal = await authenticate(request)
    rt = runtime(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        limit = rt.cfg.server.max_upload_bytes
        async with multipart_form(request, limit=limit, root=rt.settings.data_dir / "uploads") as form:
            fields = {name: form.text(name) for name in form.fields}
            job = await rt.videos.create(principal, fields, _form_upload(form.files), client_ip(request))
    elif ctype in ("application/json", ""):
        job = await rt.videos.create(
            principal, parse_json_object(await request.body()), None, client_ip(request)
        )
    else:
        raise UnsupportedMediaType(
            f"POST /v1/videos takes application/json or multipart/form-data, not {ctype}"
        )
    return json_response(job)


@router.get("/v1/videos", summary="List video jobs (newest first; after, limit, order)")
async def list_videos(request: Request) -> Response:
    principal = await authenticate(request)
    q = request.query_params
    limit_text = q.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise ValidationError("limit: a whole number from 1 to 100", param="limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValidationError("order: asc or desc", param="order")
    page = await runtime(request).videos.list_jobs(principal, q.get("after"), int(limit_text), order)
    return json_response(page)


@router.get("/v1/videos/{video_id}", summary="Retrieve a video job")
async def retrieve_video(video_id: str, request: Request) -> Response:
    principal = await authenticate(request)
    return json_response(await runtime(request).videos.retrieve(principal, video_id))


@router.delete("/v1/videos/{video_id}", summary="Delete a video job and its content")
async def delete_video(video_id: str, request: Request) -> Response:
    principal = await authenticate(request)
    return json_response(await runtime(request).videos.delete(principal, video_id))


@router.get("/v1/videos/{video_id}/content", summary="Download a finished video (MP4)")
async def video_content(video_id: str, request: Request) -> Response:
    principal = await authenticate(request)
    variant = request.query_params.get("variant", "video")
    if variant != "video":
        raise ValidationError("variant: only 'video' is available", param="variant")
    rt = runtime(request)
    stored = await rt.videos.content(principal, video_id)
    headers = {
        "Content-Length": str(stored.size),
        "Content-Disposition": f'inline; filename="{video_id}.mp4"',
    }
    return StreamingResponse(rt.files.stream(stored), media_type=stored.content_type, headers=headers)
