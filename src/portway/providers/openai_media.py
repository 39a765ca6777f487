"""OpenAI's media endpoints on any OpenAI-compatible upstream: each task goes to the same path under base_url.

Pure part (golden-tested): `build_media_request` puts a MediaCall on the wire — JSON tasks as JSON with
`model` set to the target's, multipart tasks (image edits, transcriptions, translations) as multipart/
form-data whose files are `FilePart`s of the API's spooled uploads, so the transport streams them from disk
and no upload is ever whole in memory. `parse_media_response` reads a whole answer only as far as the units
need; the upstream's bytes are what the client gets. Images are always asked as b64_json (the service makes
a `url` from them when the client wants one).

IO: `media()` sends it over the provider's Transport; speech comes back as a `ResponseStream` that relays the
audio as it arrives (its connection is released when the stream ends, closed when it is closed early).
Errors are the chat path's: `classify_error` (status → FailureKind, masked messages) and `_failure`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from portway.http.client import FilePart, StreamedBody, WireRequest
from portway.http.connection import Response
from portway.http.errors import TransportError
from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.media import MediaCall, MediaResult, MediaUnits, Task, Upload

if TYPE_CHECKING:
    from portway.providers.openai_compat import OpenAICompatProvider

PATHS: dict[Task, str] = {
    Task.EMBEDDINGS: "/embeddings",
    Task.IMAGE_GENERATION: "/images/generations",
    Task.IMAGE_EDIT: "/images/edits",
    Task.SPEECH: "/audio/speech",
    Task.TRANSCRIPTION: "/audio/transcriptions",
    Task.TRANSLATION: "/audio/translations",
}
TASKS = frozenset(PATHS)
MULTIPART = frozenset({Task.IMAGE_EDIT, Task.TRANSCRIPTION, Task.TRANSLATION})
IMAGE_TASKS = frozenset({Task.IMAGE_GENERATION, Task.IMAGE_EDIT})
GATEWAY_ONLY_FIELDS = frozenset({"models"})  # (as chat's): steer portway, never reach an upstream
JSON_TYPE = "application/json"
STREAM_IDLE_SECONDS = 60.0  # longest gap between two chunks of streamed audio (as chat's default)
# What a speech answer is when the upstream sends no Content-Type (OpenAI's formats; mp3 is its default).
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_CUE_END = re.compile(rb"--> *(\d+):(\d\d):(\d\d)[,.](\d{3})")


# -- building -----------------------------------------------------------------------------------------------


def request_fields(call: MediaCall) -> dict[str, Any]:
    """The fields sent upstream: the client's, `model` the target's, images asked as b64_json."""
    fields = {k: v for k, v in call.payload.items() if k not in GATEWAY_ONLY_FIELDS and v is not None}
    fields["model"] = call.model
    if call.task in IMAGE_TASKS:
        if call.model.startswith("gpt-image"):
            fields.pop("response_format", None)  # always b64_json there, and OpenAI rejects the field
        else:
            fields["response_format"] = "b64_json"
    return fields


def _quote(text: str) -> str:
    # A name or filename is one quoted header parameter: escape as browsers do (WHATWG form encoding).
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _text_parts(name: str, value: Any, boundary: str) -> list[bytes]:
    # A list is a repeated `name[]` field, as OpenAI's SDKs send `timestamp_granularities[]`.
    if isinstance(value, list):
        name = name if name.endswith("[]") else name + "[]"
        values = value
    else:
        values = [value]
    return [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
        + _form_value(v).encode()
        + b"\r\n"
        for v in values
    ]


def _file_head(upload: Upload, boundary: str) -> bytes:
    content_type = upload.content_type or "application/octet-stream"
    if any(c in content_type for c in "\r\n\0"):
        content_type = "application/octet-stream"
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(upload.field)}"; '
        f'filename="{_quote(upload.filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()


def multipart_body(fields: dict[str, Any], files: list[Upload], boundary: str) -> StreamedBody:
    """Text fields first (an upstream reading as it goes sees `model` before the audio), then the files,
    each a FilePart read from its spool when the body is written."""
    parts: list[bytes | FilePart] = []
    for name, value in fields.items():
        parts += _text_parts(name, value, boundary)
    for upload in files:
        parts += [_file_head(upload, boundary), FilePart(upload.path, upload.size), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return StreamedBody(parts)


def build_media_request(
    provider: OpenAICompatProvider, call: MediaCall, *, boundary: str | None = None
) -> WireRequest:
    fields = request_fields(call)
    url = (provider.settings.base_url or "").rstrip("/") + PATHS[call.task]
    body: bytes | StreamedBody
    if call.task in MULTIPART:
        boundary = boundary or "portway-" + secrets.token_hex(16)
        body = multipart_body(fields, call.files, boundary)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    else:
        body = orjson.dumps(fields)
        headers = {"Content-Type": JSON_TYPE}
    headers.update(provider.settings.headers)
    if call.key is not None:
        headers[provider.auth_header] = provider.auth_scheme + call.key
    return WireRequest("POST", url, headers, body, provider._tls)


# -- parsing ------------------------------------------------------------------------------------------------


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent a body that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"upstream sent JSON that is not {what}")
    return obj


def _data_list(obj: dict[str, Any], what: str) -> list[Any]:
    data = obj.get("data")
    if not isinstance(data, list):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"upstream sent JSON that is not {what}")
    return data


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def audio_seconds(body: bytes, content_type: str, fmt: str) -> float:
    """Seconds of audio an answer reports: verbose_json's `duration`, json's `usage.seconds`, or the end of
    the last srt/vtt cue; 0 when the answer says nothing (text)."""
    if fmt in ("json", "verbose_json") or content_type.startswith(JSON_TYPE):
        obj = _json_object(body, "a transcription")
        if not isinstance(obj.get("text"), str):
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent JSON that is not a transcription")
        duration = _number(obj.get("duration"))
        usage = obj.get("usage")
        if duration is None and isinstance(usage, dict) and usage.get("type", "duration") == "duration":
            duration = _number(usage.get("seconds"))
        return max(0.0, duration or 0.0)
    if fmt in ("srt", "vtt"):
        ends = _CUE_END.findall(body[-4096:])  # the last cue is at the end
        if ends:
            h, m, s, ms = (int(x) for x in ends[-1])
            return h * 3600 + m * 60 + s + ms / 1000
    return 0.0


def parse_media_response(call: MediaCall, content_type: str, body: bytes) -> MediaResult:
    """A whole (non-streamed) 2xx answer: checked for its shape, units taken from it, bytes kept as sent."""
    task, payload = call.task, call.payload
    if task is Task.EMBEDDINGS:
        obj = _json_object(body, "an embeddings list")
        _data_list(obj, "an embeddings list")
        usage = obj.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        units = MediaUnits(prompt_tokens=tokens if isinstance(tokens, int) and tokens >= 0 else 0)
        return MediaResult(JSON_TYPE, _served(obj, call.model), units, body=body)
    if task in IMAGE_TASKS:
        obj = _json_object(body, "an images answer")
        data = _data_list(obj, "an images answer")
        size = payload.get("size")
        units = MediaUnits(images=len(data), image_size=size if isinstance(size, str) else None)
        return MediaResult(JSON_TYPE, call.model, units, body=body)
    if task in (Task.TRANSCRIPTION, Task.TRANSLATION):
        fmt = payload.get("response_format")
        fmt = fmt if isinstance(fmt, str) else "json"
        seconds = audio_seconds(body, content_type, fmt)
        kind = content_type or (JSON_TYPE if fmt in ("json", "verbose_json") else "text/plain; charset=utf-8")
        return MediaResult(kind, call.model, MediaUnits(audio_seconds=seconds), body=body)
    if task is Task.SPEECH:
        return MediaResult(content_type or speech_type(payload), call.model, speech_units(payload), body=body)
    raise ValueError(f"not an OpenAI media task: {task}")


def _served(obj: dict[str, Any], model: str) -> str:
    served = obj.get("model")
    return served if isinstance(served, str) and served else model


def speech_type(payload: dict[str, Any]) -> str:
    fmt = payload.get("response_format")
    return SPEECH_TYPES.get(fmt if isinstance(fmt, str) else "mp3", "application/octet-stream")


def speech_units(payload: dict[str, Any]) -> MediaUnits:
    text = payload.get("input")
    return MediaUnits(characters=len(text) if isinstance(text, str) else 0)


# -- IO -----------------------------------------------------------------------------------------------------


async def media(provider: OpenAICompatProvider, call: MediaCall) -> MediaResult:
    from portway.providers.openai_compat import _failure  # (openai_compat imports this module lazily too)

    if call.task not in TASKS:
        raise NotImplementedError(f"{type(provider).__name__} serves no {call.task} calls")
    req = build_media_request(provider, call)
    timeout = min(call.timeout, provider.settings.timeout or call.timeout)
    try:
        if call.task is Task.SPEECH:
            return await _open_audio(provider, req, call, timeout)
        async with await provider.transport.send(req, timeout=timeout) as resp:
            body = await resp.read()
        if resp.status >= 400:
            raise provider.classify_error(resp.status, resp.headers, body, call.key)
        return parse_media_response(call, resp.headers.get("content-type") or "", body)
    except (TransportError, OSError) as exc:  # (CancelledError is not an Exception: it passes)
        raise _failure(exc, f"no answer within {timeout:g}s") from None


async def _open_audio(
    provider: OpenAICompatProvider, req: WireRequest, call: MediaCall, timeout: float
) -> MediaResult:
    """Speech: returned once its first bytes are in (until then a failure can still fall back); after that
    only the idle gap between chunks is bounded."""
    resp = await provider.transport.send(req, timeout=timeout, read_timeout=STREAM_IDLE_SECONDS)
    try:
        if resp.status >= 400:
            raise provider.classify_error(resp.status, resp.headers, await resp.read(), call.key)
        first = await resp.readany()
        if not first:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent no audio")
        resp.clear_deadline()
    except BaseException:
        resp.close()
        raise
    content_type = resp.headers.get("content-type") or speech_type(call.payload)
    stream = ResponseStream(resp, first)
    return MediaResult(content_type, call.model, speech_units(call.payload), stream=stream)


class ResponseStream:
    """The rest of an upstream's body, chunk by chunk as it arrives. Iterating raises UpstreamFailure if
    the body breaks off or stalls. The connection is released at the end and closed by `aclose()` before
    it (how the upstream learns nobody listens); `aclose()` is safe to call twice, also before iterating."""

    def __init__(self, resp: Response, first: bytes) -> None:
        self._resp = resp
        self._first: bytes | None = first
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = await self._resp.readany()
        except (TransportError, OSError) as exc:
            from portway.providers.openai_compat import _failure

            await self.aclose()
            raise _failure(exc, "upstream audio stream stalled") from None
        if not chunk:
            self._closed = True
            self._resp.release()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._resp.close()
