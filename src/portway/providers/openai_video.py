"""Video generation on an OpenAI-compatible upstream: OpenAI's job API, driven to its end in one call.

`video(provider, call)` creates the upstream job (`POST {base_url}/videos`: JSON, or multipart with the
`input_reference` image streamed from disk), polls `GET /videos/{id}` with a growing interval until the job
is completed or failed, then returns `GET /videos/{id}/content` as a stream of bytes (never whole in memory).
All of it within `call.timeout` (the video job's deadline share); each HTTP exchange also within the
provider's own `timeout`, when one is configured.

A job the upstream reports as failed is a SERVER failure (the next target may succeed) whose message carries
the upstream's error code and message, with the key masked, so the gateway's job says why it failed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from portway.http.client import FilePart, StreamedBody, WireRequest
from portway.http.errors import TransportError
from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.media import MediaCall, MediaResult, MediaUnits, Upload

if TYPE_CHECKING:
    from portway.http.connection import Response
    from portway.providers.openai_compat import OpenAICompatProvider

POLL_FIRST = 0.25  # the first status check comes soon: short clips (and test upstreams) finish fast
POLL_MAX = 5.0
_POLL_GROWTH = 1.5
_DONE = frozenset({"completed", "failed"})
_MAX_MESSAGE = 500
_GATEWAY_FIELDS = frozenset({"models", "input_reference"})


def _remaining(deadline: float, provider: OpenAICompatProvider) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamFailure(FailureKind.TIMEOUT, "the video was not ready within the deadline")
    own = provider.settings.timeout
    return min(left, own) if own else left


def _headers(provider: OpenAICompatProvider, key: str | None, content_type: str | None) -> dict[str, str]:
    headers = dict(provider.settings.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers[provider.auth_header] = provider.auth_scheme + key
    return headers


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _multipart(fields: dict[str, Any], upload: Upload) -> tuple[str, StreamedBody]:
    """A multipart/form-data body: the text fields, then the file read from disk as it is sent."""
    boundary = "portway-" + secrets.token_hex(16)
    parts: list[bytes | FilePart] = []
    for name, value in fields.items():
        if value is None:
            continue
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode()
            + _text(value).encode()
            + b"\r\n"
        )
    filename = _quoted(upload.filename or "input")
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="input_reference"; '
            f'filename="{filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
        ).encode()
    )
    parts.append(FilePart(upload.path, upload.size))
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", StreamedBody(parts)


def _quoted(text: str) -> str:
    # A header parameter: no quote, backslash or line break may end it early.
    return "".join(c if c not in '"\\\r\n' else "_" for c in text)


def create_request(provider: OpenAICompatProvider, call: MediaCall, base: str) -> WireRequest:
    fields = {k: v for k, v in call.payload.items() if k not in _GATEWAY_FIELDS}
    fields["model"] = call.model
    reference = next((f for f in call.files if f.field == "input_reference"), None)
    if reference is None:
        headers = _headers(provider, call.key, "application/json")
        return WireRequest("POST", base + "/videos", headers, orjson.dumps(fields), provider._tls)
    content_type, body = _multipart(fields, reference)
    return WireRequest(
        "POST", base + "/videos", _headers(provider, call.key, content_type), body, provider._tls
    )


def _job(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(
            FailureKind.BAD_RESPONSE, "upstream sent a video job that is not JSON"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent JSON that is not a video job")
    return obj


async def _exchange(
    provider: OpenAICompatProvider, req: WireRequest, key: str | None, deadline: float, created: bool
) -> dict[str, Any]:
    async with await provider.transport.send(req, timeout=_remaining(deadline, provider)) as resp:
        body = await resp.read()
    if resp.status >= 400:
        failure = provider.classify_error(resp.status, resp.headers, body, key)
        if created and failure.kind is FailureKind.BAD_REQUEST:
            # The request was accepted already: a 4xx on its job is the upstream's fault, not the client's.
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE,
                f"upstream lost the video job (HTTP {resp.status})",
                status=resp.status,
            )
        raise failure
    return _job(body)


def _failed(job: dict[str, Any], key: str | None) -> UpstreamFailure:
    from portway.providers.openai_compat import mask_key  # (openai_compat imports this module)

    found = job.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else "unknown"
    message = err.get("message") if isinstance(err.get("message"), str) else "no reason given"
    why = mask_key(f"{code}: {message}", key, _MAX_MESSAGE)
    return UpstreamFailure(FailureKind.SERVER, f"the upstream's video job failed ({why})")


async def _content(
    provider: OpenAICompatProvider, url: str, key: str | None, deadline: float
) -> AsyncIterator[bytes]:
    req = WireRequest("GET", url, _headers(provider, key, None), b"", provider._tls)
    resp: Response = await provider.transport.send(req, timeout=_remaining(deadline, provider))
    try:
        if resp.status >= 400:
            body = await resp.read()
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE,
                f"upstream refused the finished video's content (HTTP {resp.status}, {len(body)} bytes)",
                status=resp.status,
            )
        first = await resp.readany()
    except BaseException:
        resp.close()
        raise
    return _relay(resp, first)


async def _relay(resp: Response, first: bytes) -> AsyncIterator[bytes]:
    try:
        chunk = first
        while chunk:
            yield chunk
            try:
                chunk = await resp.readany()
            except TransportError as exc:
                raise UpstreamFailure(FailureKind.CONNECTION, f"video download broke off: {exc}") from None
    finally:
        resp.close()


async def video(provider: OpenAICompatProvider, call: MediaCall) -> MediaResult:
    """Create the upstream job, wait for it, and hand back its content as a stream (see module doc)."""
    from portway.providers.openai_compat import _failure  # (openai_compat imports this module)

    base = (provider.settings.base_url or "").rstrip("/")
    deadline = time.monotonic() + call.timeout
    try:
        job = await _exchange(provider, create_request(provider, call, base), call.key, deadline, False)
        url = f"{base}/videos/{quote(job['id'], safe='')}"
        poll = WireRequest("GET", url, _headers(provider, call.key, None), b"", provider._tls)
        delay = POLL_FIRST
        while job.get("status") not in _DONE:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(POLL_MAX, delay * _POLL_GROWTH)
            job = await _exchange(provider, poll, call.key, deadline, True)
        if job["status"] == "failed":
            raise _failed(job, call.key)
        stream = await _content(provider, url + "/content", call.key, deadline)
    except (TransportError, OSError) as exc:
        raise _failure(exc, "the video was not ready within the deadline") from None
    served = job.get("model")
    return MediaResult(
        "video/mp4",
        served if isinstance(served, str) else call.model,
        MediaUnits(video_seconds=_seconds(job.get("seconds"), call.payload.get("seconds"))),
        stream=stream,
    )


def _seconds(*candidates: Any) -> float:
    for value in candidates:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return 0.0
