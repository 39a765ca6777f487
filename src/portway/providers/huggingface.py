"""Hugging Face: chat through its OpenAI-compatible router, media through its task API.

Chat goes to `base_url` (https://router.huggingface.co/v1, OpenAI's shape, shared with the OpenAI-compatible
base); its error bodies may be `{"error": "message"}` (handled by the shared parser). Model ids may carry a
`:provider` suffix (e.g. `meta-llama/Llama-3.1-8B-Instruct:cerebras`): passed as is.

Media goes to `options.inference_url` (default https://router.huggingface.co/hf-inference) as
`POST {inference_url}/models/{model}`; the shapes are in `hf_tasks` (pure, golden-tested). A cold model
answers 503 with `estimated_time`: the attempt waits for it (at most MAX_LOADING_WAITS times, never past its
own timeout) and then gives up as SERVER, so the router falls back to the next target.

Uploads are read whole from their spooled file (the API caps them at `server.max_upload_bytes`): HF wants the
audio as the body and images base64 inside JSON, and the transport sends bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from portway.http.client import WireRequest
from portway.http.errors import TransportError
from portway.providers import hf_tasks
from portway.providers.base import FailureKind, ProviderOptions, ProviderSettings, UpstreamFailure
from portway.providers.local.embeddings import cl100k_decoder
from portway.providers.media import MediaCall, MediaResult, MediaUnits, Task, Upload
from portway.providers.openai_compat import OpenAICompatProvider, _failure

if TYPE_CHECKING:
    from portway.http.client import Transport

log = logging.getLogger("portway.providers")

DEFAULT_INFERENCE_URL = "https://router.huggingface.co/hf-inference"
MAX_LOADING_WAITS = 2  # a model still loading after this many waits is given up on for this request
_RETRY_RESERVE = 0.5  # seconds a retry after a loading wait needs at least, or the wait is not worth it
MAX_IMAGES = 10  # OpenAI's limit on `n`; HF makes one image per call

_Handler = Callable[[MediaCall, float], Awaitable[MediaResult]]


class HuggingFaceOptions(ProviderOptions):
    inference_url: str = Field(
        DEFAULT_INFERENCE_URL,
        min_length=1,
        description="root of the task API: POST {inference_url}/models/{model}",
    )


class HuggingFaceProvider(OpenAICompatProvider):
    type_name = "huggingface"
    default_base_url = "https://router.huggingface.co/v1"
    Options = HuggingFaceOptions
    tasks = frozenset(
        {
            Task.CHAT,
            Task.EMBEDDINGS,
            Task.IMAGE_GENERATION,
            Task.IMAGE_EDIT,
            Task.SPEECH,
            Task.TRANSCRIPTION,
            Task.VIDEO,
        }
    )

    def __init__(self, settings: ProviderSettings, transport: Transport) -> None:
        super().__init__(settings, transport)
        options = HuggingFaceOptions.model_validate(settings.options)
        self._inference = options.inference_url.rstrip("/")
        self._handlers: dict[Task, _Handler] = {
            Task.EMBEDDINGS: self._embeddings,
            Task.IMAGE_GENERATION: self._images,
            Task.IMAGE_EDIT: self._image_edit,
            Task.SPEECH: self._speech,
            Task.TRANSCRIPTION: self._transcription,
            Task.VIDEO: self._video,
        }

    # -- pure --------------------------------------------------------------------------------------------

    def task_request(self, model: str, key: str | None, body: bytes, content_type: str) -> WireRequest:
        headers = {"Content-Type": content_type, **self.settings.headers}
        if key is not None:
            headers[self.auth_header] = self.auth_scheme + key
        return WireRequest("POST", f"{self._inference}/models/{model}", headers, body, self._tls)

    # -- IO ----------------------------------------------------------------------------------------------

    async def media(self, call: MediaCall) -> MediaResult:
        handler = self._handlers.get(call.task)
        if handler is None:
            raise NotImplementedError(f"{type(self).__name__} serves no {call.task} calls")
        timeout = min(call.timeout, self.settings.timeout or call.timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await handler(call, deadline)
        except (TransportError, OSError) as exc:
            raise _failure(exc, f"no answer within {timeout:g}s") from None

    async def _post(
        self, call: MediaCall, body: bytes, content_type: str, deadline: float
    ) -> tuple[str, bytes]:
        """The answer's Content-Type and body; waits out a loading model while the attempt has time."""
        loop = asyncio.get_running_loop()
        req = self.task_request(call.model, call.key, body, content_type)
        for waited in range(MAX_LOADING_WAITS + 1):
            left = deadline - loop.time()
            if left <= 0:
                raise UpstreamFailure(FailureKind.TIMEOUT, "no answer in time (the model was loading)")
            async with await self.transport.send(req, timeout=left) as resp:
                data = await resp.read()
            if resp.status < 400:
                return resp.headers.get("content-type") or "", data
            wait = hf_tasks.loading_wait(resp.status, data)
            if wait is None:
                raise self.classify_error(resp.status, resp.headers, data, call.key)
            nap = min(wait, deadline - loop.time() - _RETRY_RESERVE)
            if waited == MAX_LOADING_WAITS or nap < 0:
                break
            log.info("%s: model %s is loading, waiting %.1f s", self.name, call.model, nap)
            await asyncio.sleep(nap)
        raise UpstreamFailure(FailureKind.SERVER, f"model {call.model} is still loading", status=503)

    async def _embeddings(self, call: MediaCall, deadline: float) -> MediaResult:
        texts = hf_tasks.embeddings_texts(call.payload, cl100k_decoder)
        _, data = await self._post(call, hf_tasks.build_embeddings(texts), hf_tasks.JSON, deadline)
        body, tokens = hf_tasks.parse_embeddings(data, texts, call.payload, call.model)
        return MediaResult(hf_tasks.JSON, call.model, MediaUnits(prompt_tokens=tokens), body=body)

    async def _images(self, call: MediaCall, deadline: float) -> MediaResult:
        n = _count(call.payload.get("n"))
        seed = call.payload.get("seed")
        payloads = [
            # One call per image: the same seed would draw the same image n times.
            {**call.payload, "seed": seed + i}
            if isinstance(seed, int) and not isinstance(seed, bool)
            else call.payload
            for i in range(n)
        ]
        images = await _all(
            self._one_image(call, hf_tasks.build_text_to_image(p), hf_tasks.JSON, deadline) for p in payloads
        )
        return _images_result(call, images)

    async def _image_edit(self, call: MediaCall, deadline: float) -> MediaResult:
        image = _upload(call.files, ("image", "image[]"))
        if image is None:
            raise hf_tasks.bad_request("image", "an image file is required")
        mask = _upload(call.files, ("mask",))
        image_bytes = await _read(image.path)
        mask_bytes = await _read(mask.path) if mask is not None else None
        body = hf_tasks.build_image_to_image(call.payload, image_bytes, mask_bytes)
        n = _count(call.payload.get("n"))
        images = await _all(self._one_image(call, body, hf_tasks.JSON, deadline) for _ in range(n))
        return _images_result(call, images)

    async def _one_image(self, call: MediaCall, body: bytes, content_type: str, deadline: float) -> bytes:
        media, data = await self._post(call, body, content_type, deadline)
        hf_tasks.parse_binary(media, data, "image")
        return data

    async def _speech(self, call: MediaCall, deadline: float) -> MediaResult:
        body = hf_tasks.build_speech(call.payload)
        media, data = await self._post(call, body, hf_tasks.JSON, deadline)
        content_type = hf_tasks.parse_binary(media, data, "audio")
        units = MediaUnits(characters=len(call.payload.get("input") or ""))
        return MediaResult(content_type, call.model, units, body=data)

    async def _transcription(self, call: MediaCall, deadline: float) -> MediaResult:
        upload = _upload(call.files, ("file",)) or (call.files[0] if call.files else None)
        if upload is None:
            raise hf_tasks.bad_request("file", "an audio file is required")
        audio = await _read(upload.path)
        duration = await asyncio.to_thread(probe_seconds, upload.path)
        if hf_tasks.wants_timestamps(call.payload):
            body, content_type = hf_tasks.build_asr_json(audio), hf_tasks.JSON
        else:  # the file itself, as HF takes audio without parameters
            body, content_type = audio, upload.content_type or "application/octet-stream"
        _, data = await self._post(call, body, content_type, deadline)
        rendered, media, seconds = hf_tasks.parse_transcription(data, call.payload, duration)
        return MediaResult(media, call.model, MediaUnits(audio_seconds=seconds), body=rendered)

    async def _video(self, call: MediaCall, deadline: float) -> MediaResult:
        reference = _upload(call.files, ("input_reference",))
        image = await _read(reference.path) if reference is not None else None
        media, data = await self._post(
            call, hf_tasks.build_video(call.payload, image), hf_tasks.JSON, deadline
        )
        content_type = hf_tasks.parse_binary(media, data, "video")
        if content_type == "application/octet-stream":
            content_type = "video/mp4"
        units = MediaUnits(video_seconds=hf_tasks.video_seconds(call.payload))
        return MediaResult(content_type, call.model, units, body=data)


async def _all(calls: Iterable[Awaitable[bytes]]) -> list[bytes]:
    """Every call's answer, in order; when one fails the others are cancelled (their answers are no use)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _count(n: Any) -> int:
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise hf_tasks.bad_request("n", f"n must be between 1 and {MAX_IMAGES}")
    return n


def _images_result(call: MediaCall, images: list[bytes]) -> MediaResult:
    size = call.payload.get("size")
    units = MediaUnits(
        images=len(images), image_size=size if isinstance(size, str) and size != "auto" else None
    )
    return MediaResult(hf_tasks.JSON, call.model, units, body=hf_tasks.images_body(images))


def _upload(files: list[Upload], fields: tuple[str, ...]) -> Upload | None:
    return next((f for f in files if f.field in fields), None)


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


def probe_seconds(path: Path) -> float | None:
    """The audio's length from its container (no decoding), for pricing; None without PyAV or a length."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return float(container.duration) / 1_000_000  # in av.time_base units (microseconds)
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # not a file PyAV reads: HF will say so; the length is only for pricing
        return None
    return None
