"""OpenAI's media endpoints for the fake upstream: deterministic answers, the fake's fault modes, a journal.

`/v1/embeddings` (vectors of `dimensions`, default EMBED_DIM; float or base64), `/v1/images/generations` and
`/v1/images/edits` (a small real PNG per image, b64_json or url), `/v1/audio/speech` (a short real WAV, sent
in chunks as they are "made"; pcm without its header), `/v1/audio/transcriptions` and `/translations` (every
response_format: json, text, verbose_json, srt, vtt). Multipart requests are read as a stream: the journal
holds their text fields as the request's `body` and each file's name, type, size and sha256 in `files`.

Faults as for chat (header, script, `model@fault`, key): `@500`, `@429:2`, `@hang`, `@slow:1`, `@reset`,
`@garbage`, `@cut` (half the body, then the connection is cut), `@slowchunks:0.2` (gaps between chunks),
`@nousage` (an answer without its `usage`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from tests.fakes.hf_tasks import png, wav
from tests.fakes.upstream import (
    CREATED,
    RecordedFile,
    RecordedRequest,
    _abort,
    _bearer,
    _dumps,
    _error,
)

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream

EMBED_DIM = 8
SPEECH_CHUNK = 4096  # bytes per write of a speech answer
BYTES_PER_SECOND = 32_000  # an upload's "duration": 16 kHz, 16-bit mono
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
Answer = tuple[int, str, bytes]  # status, content type, body
Build = Callable[[dict[str, Any], list[RecordedFile]], Answer]


def add_routes(up: FakeUpstream, app: web.Application) -> None:
    build: Build
    for path, build in (
        ("/v1/embeddings", embeddings),
        ("/v1/images/generations", image_generation),
        ("/v1/audio/speech", speech),
    ):
        app.router.add_post(path, partial(_json_task, up, build))
    for path, build in (
        ("/v1/images/edits", image_edit),
        ("/v1/audio/transcriptions", partial(transcription, "transcribe")),
        ("/v1/audio/translations", partial(transcription, "translate")),
    ):
        app.router.add_post(path, partial(_upload_task, up, build))


# -- answers ------------------------------------------------------------------------------------------------


def _bad(message: str, param: str | None = None) -> Answer:
    err = _error(400, None, message)
    err["error"]["param"] = param
    return 400, JSON, _dumps(err)


def vector(item: Any, dim: int) -> list[float]:
    """Deterministic values in [-1, 1) from the item's text (or token ids)."""
    seed = json.dumps(item).encode()
    out: list[float] = []
    block = 0
    while len(out) < dim:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        out += [round(b / 128 - 1, 6) for b in digest]
        block += 1
    return out[:dim]


def _inputs(raw: Any) -> list[Any] | None:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        return [raw]  # one token array
    if isinstance(raw, list) and raw and all(isinstance(t, str | list) for t in raw):
        return raw
    return None


def embeddings(body: dict[str, Any], _: list[RecordedFile]) -> Answer:
    items = _inputs(body.get("input"))
    if items is None:
        return _bad("input must be a string, a list of strings or token arrays", "input")
    dim = body.get("dimensions", EMBED_DIM)
    if not isinstance(dim, int) or dim < 1:
        return _bad("dimensions must be a positive integer", "dimensions")
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        values = vector(item, dim)
        embedding: Any = base64.b64encode(struct.pack(f"<{dim}f", *values)).decode() if b64 else values
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(len(t) if isinstance(t, list) else len(t.split()) for t in items)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, JSON, _dumps({"object": "list", "data": data, "model": body.get("model"), "usage": usage})


def _images(body: dict[str, Any], seed: str) -> Answer:
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 10:
        return _bad("n must be between 1 and 10", "n")
    fmt = body.get("response_format") or "b64_json"
    if fmt not in ("b64_json", "url"):
        return _bad("response_format must be url or b64_json", "response_format")
    data = []
    for i in range(n):
        rgb = hashlib.sha256(f"{seed}/{i}".encode()).digest()[:3]
        image = png(4, 4, rgb)
        item = {"b64_json": base64.b64encode(image).decode()} if fmt == "b64_json" else {}
        if fmt == "url":
            item["url"] = f"https://fake-upstream.invalid/images/{rgb.hex()}.png"
        data.append(item)
    return 200, JSON, _dumps({"created": CREATED, "data": data})


def image_generation(body: dict[str, Any], _: list[RecordedFile]) -> Answer:
    if not isinstance(body.get("prompt"), str):
        return _bad("prompt is required", "prompt")
    return _images(body, json.dumps(body, sort_keys=True))


def image_edit(fields: dict[str, Any], files: list[RecordedFile]) -> Answer:
    if not any(f.field in ("image", "image[]") for f in files):
        return _bad("image is required", "image")
    if not isinstance(fields.get("prompt"), str):
        return _bad("prompt is required", "prompt")
    n = fields.get("n", "1")  # multipart fields are text
    body = {**fields, "n": int(n) if isinstance(n, str) and n.isdigit() else n}
    return _images(body, json.dumps(fields, sort_keys=True) + "".join(f.sha256 for f in files))


def speech(body: dict[str, Any], _: list[RecordedFile]) -> Answer:
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return _bad("input is required", "input")
    fmt = body.get("response_format") or "mp3"
    if fmt not in SPEECH_TYPES:
        return _bad(f"response_format must be one of {', '.join(SPEECH_TYPES)}", "response_format")
    audio = wav(min(2.0, 0.1 + 0.02 * len(text)))  # a real WAV whatever the format's label
    return 200, SPEECH_TYPES[fmt], audio[44:] if fmt == "pcm" else audio


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def transcription(task: str, fields: dict[str, Any], files: list[RecordedFile]) -> Answer:
    audio = [f for f in files if f.field == "file"]
    if not audio:
        return _bad("file is required", "file")
    fmt = fields.get("response_format") or "json"
    if fmt not in FORMATS:
        return _bad(f"response_format must be one of {', '.join(FORMATS)}", "response_format")
    size = audio[0].size
    duration = round(size / BYTES_PER_SECOND, 3)
    words = f"Fake {task} of {audio[0].filename} ({size} bytes)".split()
    half = len(words) // 2
    segments = [(0.0, duration / 2, " ".join(words[:half])), (duration / 2, duration, " ".join(words[half:]))]
    text = " ".join(words)
    if fmt == "text":
        return 200, TEXT, (text + "\n").encode()
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        cues = [f"{_timestamp(a, sep)} --> {_timestamp(b, sep)}\n{t}\n" for a, b, t in segments]
        if fmt == "srt":
            return 200, TEXT, "\n".join(f"{i}\n{c}" for i, c in enumerate(cues, 1)).encode()
        return 200, TEXT, ("WEBVTT\n\n" + "\n".join(cues)).encode()
    if fmt == "json":
        usage = {"type": "duration", "seconds": math.ceil(duration)}
        return 200, JSON, _dumps({"text": text, "usage": usage})
    segs = [
        {"id": i, "seek": 0, "start": a, "end": b, "text": t, "tokens": [], "temperature": 0.0,
         "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        for i, (a, b, t) in enumerate(segments)
    ]  # fmt: skip
    verbose = {"task": task, "language": "english", "duration": duration, "text": text, "segments": segs}
    return 200, JSON, _dumps(verbose)


# -- handlers -----------------------------------------------------------------------------------------------


async def _json_task(up: FakeUpstream, build: Build, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    body = parsed if isinstance(parsed, dict) else None
    model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
    key = _bearer(request)
    rec = up._new_record(request, up._pick_fault(request, model, key, scripted=True), key, body)
    answer = build(body, []) if body is not None else _bad("Request body must be JSON.")
    return await respond(up, request, rec, answer)


async def _upload_task(up: FakeUpstream, build: Build, request: web.Request) -> web.StreamResponse:
    key = _bearer(request)
    if not request.content_type.startswith("multipart/form-data"):
        rec = up._new_record(request, "ok", key)
        return await respond(up, request, rec, _bad("Content-Type must be multipart/form-data"))
    fields, files = await read_form(request)
    model = fields.get("model") if isinstance(fields.get("model"), str) else None
    rec = up._new_record(request, up._pick_fault(request, model, key, scripted=True), key, fields)
    rec.files = files
    return await respond(up, request, rec, build(fields, files))


async def read_form(request: web.Request) -> tuple[dict[str, Any], list[RecordedFile]]:
    """Text fields (a repeated `name[]` as a list) and each file's size and hash, read as a stream."""
    fields: dict[str, Any] = {}
    files: list[RecordedFile] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.filename is None:
            value = await part.text()
            if part.name.endswith("[]"):
                fields.setdefault(part.name, []).append(value)
            else:
                fields[part.name] = value
            continue
        digest, size = hashlib.sha256(), 0
        while chunk := await part.read_chunk(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
        content_type = part.headers.get("Content-Type", "")
        files.append(RecordedFile(part.name, part.filename, content_type, size, digest.hexdigest()))
    return fields, files


async def respond(
    up: FakeUpstream, request: web.Request, rec: RecordedRequest, answer: Answer
) -> web.StreamResponse:
    try:
        return await _respond(up, request, rec, answer)
    except (asyncio.CancelledError, ConnectionResetError) as exc:
        rec.completed = False  # (as chat's _guard) our last write did not finish
        rec.gone()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return web.Response()


async def _respond(
    up: FakeUpstream, request: web.Request, rec: RecordedRequest, answer: Answer
) -> web.StreamResponse:
    kind, arg, early = await up.early_fault(request, rec)
    if early is not None:
        return early
    status, content_type, body = answer
    if kind == "garbage":
        body = b"<html>oops</html>\n"
    if kind == "nousage" and content_type == JSON:
        body = _dumps({k: v for k, v in json.loads(body).items() if k != "usage"})
    if status != 200 or not (content_type.startswith("audio/") or kind in ("cut", "slowchunks")):
        whole = web.Response(status=status, body=body, headers={"Content-Type": content_type})
        return await up._finish(request, rec, whole)
    gap = float(arg) if kind == "slowchunks" else 0.0
    return await _chunks(up, request, rec, content_type, body, gap, kind)


async def _chunks(
    up: FakeUpstream,
    request: web.Request,
    rec: RecordedRequest,
    content_type: str,
    body: bytes,
    gap: float,
    kind: str,
) -> web.StreamResponse:
    """The body in SPEECH_CHUNK writes, chunked on the wire (no Content-Length, as a producer would)."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    await resp.prepare(request)
    chunks = [body[i : i + SPEECH_CHUNK] for i in range(0, len(body), SPEECH_CHUNK)]
    if kind == "cut":
        chunks = chunks[: max(1, len(chunks) // 2)]
    for i, chunk in enumerate(chunks):
        if i and gap and not await up._sleep(request, rec, gap):
            return resp
        if request.transport is None or request.transport.is_closing():
            rec.gone()
            return resp
        rec.completed = kind != "cut" and i == len(chunks) - 1
        await resp.write(chunk)
    if kind == "cut":
        _abort(request)
        return resp
    await resp.write_eof()
    return resp
