"""The media endpoints in OpenAI's shapes: embeddings, images (generations, edits), speech, transcriptions.

Thin: authenticate, read and check the request (clear 400 / 413 / 415 naming the field), hand it to
`services.media.MediaService`, render its answer. What only a model knows (an unknown voice, audio that
does not decode) is the provider's to refuse, as a BAD_REQUEST that comes back as a 400.

Multipart bodies are parsed by `api.uploads` (files on disk, capped at `server.max_upload_bytes`, removed
after the answer). A client that goes away during the upstream call cancels it, as on the chat route: the
service records the request as 499 and settles its limits.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from portway.api.common import authenticate, reply_headers, request_context, runtime
from portway.api.departure import Departure, EventStream
from portway.api.uploads import Form, multipart_form
from portway.api.validation import parse_json_object
from portway.errors import UnsupportedMediaType, ValidationError
from portway.providers.media import Task, Upload
from portway.services.chat import RequestContext

router = APIRouter(tags=["media"])

MAX_IMAGES = 10  # n: OpenAI's range is 1..10
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's cap on the items of one embeddings request
MAX_IMAGE_PIXELS = 40_000_000  # a larger upload is refused before it is decoded (decompression bombs)
_SIZE = re.compile(r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")
_SPEECH_FORMATS = frozenset({"mp3", "opus", "aac", "flac", "wav", "pcm"})
_TRANSCRIPT_FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt", "diarized_json"})
_IMAGE_TYPES = ("image/", "application/octet-stream")  # the SDK sends octet-stream for unnamed bytes
_AUDIO_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")


# -- the routes ------------------------------------------------------------------------------------------


@router.post("/v1/embeddings", summary="Create embeddings (OpenAI-compatible)")
async def embeddings(request: Request) -> Response:
    return await _json_route(request, Task.EMBEDDINGS, check_embeddings)


@router.post("/v1/images/generations", summary="Create images from a prompt (OpenAI-compatible)")
async def image_generations(request: Request) -> Response:
    return await _json_route(request, Task.IMAGE_GENERATION, check_image_request)


@router.post("/v1/audio/speech", summary="Create speech from text (OpenAI-compatible)")
async def speech(request: Request) -> Response:
    return await _json_route(request, Task.SPEECH, check_speech)


async def _json_route(request: Request, task: Task, check: Callable[[dict[str, Any]], object]) -> Response:
    """A JSON media request: authenticate, read and check the body, serve."""
    started = time.monotonic()
    principal = await authenticate(request)
    payload, size = await _json(request)
    check(payload)
    return await _serve(
        request, task, payload, [], request_context(request, principal, started, size, endpoint=task.value)
    )


@router.post("/v1/images/edits", summary="Edit images with a prompt and an optional mask (multipart)")
async def image_edits(request: Request) -> Response:
    return await _upload_route(request, Task.IMAGE_EDIT)


@router.post("/v1/audio/transcriptions", summary="Transcribe audio (multipart, OpenAI-compatible)")
async def transcriptions(request: Request) -> Response:
    return await _upload_route(request, Task.TRANSCRIPTION)


@router.post("/v1/audio/translations", summary="Translate audio into English text (multipart)")
async def translations(request: Request) -> Response:
    return await _upload_route(request, Task.TRANSLATION)


async def _upload_route(request: Request, task: Task) -> Response:
    started = time.monotonic()
    principal = await authenticate(request)  # before a byte of the upload is read
    rt = runtime(request)
    root = rt.settings.data_dir / "uploads"
    try:
        async with multipart_form(request, limit=rt.cfg.server.max_upload_bytes, root=root) as form:
            if task is Task.IMAGE_EDIT:
                payload = await check_image_edit(form)
            else:
                payload = check_audio(form)
            ctx = request_context(request, principal, started, form.size, endpoint=task.value)
            return await _serve(request, task, payload, form.files, ctx)
    except ClientDisconnect:
        return Response(status_code=499)  # gone mid-upload: nobody reads this; the files are removed


# -- serving ---------------------------------------------------------------------------------------------


async def _json(request: Request) -> tuple[dict[str, Any], int]:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/"):
        raise UnsupportedMediaType("This endpoint takes a JSON body (application/json), not multipart")
    raw = await request.body()
    return parse_json_object(raw), len(raw)


async def _serve(
    request: Request, task: Task, payload: dict[str, Any], files: list[Upload], ctx: RequestContext
) -> Response:
    """Run the request, cancelled if the client leaves meanwhile (the service records that as 499)."""
    departure = Departure()
    departure.arm(request.scope, request.receive)  # the body is read: `receive` only reports a disconnect
    try:
        reply = await runtime(request).media.run(
            task, payload["model"], payload, files, ctx, base_url=str(request.base_url)
        )
    except asyncio.CancelledError:
        if departure.forgive():
            return Response(status_code=499)  # nobody is left to read it
        raise
    except BaseException:
        departure.disarm()
        raise
    headers = reply_headers(reply, ctx.request_id)
    if reply.stream is None:
        departure.disarm()
        return Response(reply.body or b"", headers=headers, media_type=reply.content_type)
    head = [(b"content-type", reply.content_type.encode("latin-1"))]
    return EventStream(reply.stream, headers, departure, head=head)


# -- checks: what the gateway itself can tell is wrong, before any upstream call ------------------------


def _bad(param: str, message: str) -> ValidationError:
    return ValidationError(f"'{param}' {message}", param=param)


def _model(payload: dict[str, Any]) -> None:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "must be a non-empty string")


def check_embeddings(payload: dict[str, Any]) -> None:
    _model(payload)
    value = payload.get("input")
    if isinstance(value, str):
        if not value:
            raise _bad("input", "must not be empty")
    elif isinstance(value, list):
        if not value:
            raise _bad("input", "must not be an empty list")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise _bad("input", f"may hold at most {MAX_EMBEDDING_INPUTS} items")
        if not (_all_text(value) or _tokens(value) or all(_tokens(v) for v in value)):
            raise _bad("input", "must be a string, a list of strings, or token arrays")
    else:
        raise _bad("input", "must be a string, a list of strings, or token arrays")
    if payload.get("encoding_format") not in (None, "float", "base64"):
        raise _bad("encoding_format", "must be 'float' or 'base64'")
    dims = payload.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise _bad("dimensions", "must be a positive integer")


def _all_text(items: list[Any]) -> bool:
    return all(isinstance(v, str) and v for v in items)


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(v) is int and v >= 0 for v in value)


def check_image_request(payload: dict[str, Any]) -> None:
    """The fields generations and edits share (JSON types: multipart fields are converted first)."""
    _model(payload)
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", "must be a non-empty string")
    n = payload.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES):
        raise _bad("n", f"must be an integer from 1 to {MAX_IMAGES}")
    size = payload.get("size")
    if size is not None and (not isinstance(size, str) or not (size == "auto" or _SIZE.match(size))):
        raise _bad("size", "must be 'auto' or WIDTHxHEIGHT, e.g. '1024x1024'")
    if payload.get("response_format") not in (None, "url", "b64_json"):
        raise _bad("response_format", "must be 'url' or 'b64_json'")


def check_speech(payload: dict[str, Any]) -> None:
    _model(payload)
    text = payload.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _bad("input", "must be a non-empty string")
    voice = payload.get("voice")
    if not (isinstance(voice, str) and voice) and not (isinstance(voice, dict) and voice.get("id")):
        raise _bad("voice", "must be a voice name (e.g. 'alloy')")
    fmt = payload.get("response_format")
    if fmt is not None and fmt not in _SPEECH_FORMATS:
        raise _bad("response_format", f"must be one of {', '.join(sorted(_SPEECH_FORMATS))}")
    speed = payload.get("speed")
    if speed is not None and (
        not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.25 <= speed <= 4.0
    ):
        raise _bad("speed", "must be a number from 0.25 to 4.0")


def _fields(form: Form, lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """Text fields as a payload: `name[]` (and a repeated name in `lists`) becomes a list under `name`."""
    payload: dict[str, Any] = {}
    for name, value in form.fields.items():
        key = name[:-2] if name.endswith("[]") else name
        if name.endswith("[]") or key in lists:
            payload[key] = value if isinstance(value, list) else [value]
        else:
            payload[key] = value[-1] if isinstance(value, list) else value
    return payload


def _number(payload: dict[str, Any], name: str, kind: type[int] | type[float]) -> None:
    value = payload.get(name)
    if value is None or value == "":
        payload.pop(name, None)
        return
    try:
        payload[name] = kind(value)
    except ValueError:
        raise _bad(name, "must be a number" if kind is float else "must be an integer") from None


def _content_type(upload: Upload, allowed: tuple[str, ...], what: str) -> None:
    if not upload.content_type.startswith(allowed):
        raise UnsupportedMediaType(
            f"'{upload.field}' must be {what}, not {upload.content_type}", param=upload.field.rstrip("[]")
        )


async def check_image_edit(form: Form) -> dict[str, Any]:
    payload = _fields(form)
    _number(payload, "n", int)
    check_image_request(payload)
    images = form.file("image", "image[]")
    if not images:
        raise _bad("image", "is required: one or more image files")
    masks = form.file("mask")
    for upload in [*images, *masks]:
        _content_type(upload, _IMAGE_TYPES, "an image (PNG, JPEG or WebP)")
    sizes = await asyncio.to_thread(lambda: [image_size(u) for u in [*images, *masks]])
    if masks and sizes[-1] != sizes[0]:
        (mw, mh), (iw, ih) = sizes[-1], sizes[0]
        raise _bad("mask", f"must have the image's size ({iw}x{ih}), not {mw}x{mh}")
    return payload


def image_size(upload: Upload) -> tuple[int, int]:
    """The image's size, after decoding it whole (blocking: run in a thread)."""
    from PIL import Image, UnidentifiedImageError  # here: ~2 MB per worker, and only image edits need it

    param = upload.field.rstrip("[]")
    try:
        with Image.open(upload.path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _bad(param, f"is too large ({width}x{height} pixels)")
            im.load()
            return width, height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise _bad(param, "is not an image that can be decoded (PNG, JPEG or WebP)") from None


def check_audio(form: Form) -> dict[str, Any]:
    payload = _fields(form, lists=("timestamp_granularities", "include"))
    _model(payload)
    files = form.file("file")
    if len(files) != 1:
        raise _bad("file", "is required: one audio file")
    _content_type(files[0], _AUDIO_TYPES, "audio (flac, mp3, mp4, m4a, ogg, wav or webm)")
    if files[0].size == 0:
        raise _bad("file", "is empty")
    fmt = payload.get("response_format")
    if fmt is not None and fmt not in _TRANSCRIPT_FORMATS:
        raise _bad("response_format", f"must be one of {', '.join(sorted(_TRANSCRIPT_FORMATS))}")
    _number(payload, "temperature", float)
    temperature = payload.get("temperature")
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise _bad("temperature", "must be from 0 to 1")
    return payload
