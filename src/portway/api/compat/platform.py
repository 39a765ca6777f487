"""Seed 002, AI Platform Backend: one route per Hugging Face task under `/api/...`.

Each route reads the seed's fields, fills in the seed's default model for its task, and calls chat or
media (a model id goes to `provider`, unless it names a portway alias). Answers follow the seed (`image`
as base64 with `model`, `generation_time`, `size`; speech as audio bytes); errors are its
`{"detail", "error_code", "status_code"}` with its codes.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from portway.api.common import runtime
from portway.api.compat import (
    GONE,
    anonymous_spec,
    caller,
    chat,
    errors,
    json_body,
    json_bytes,
    media,
    model_name,
    served_headers,
)
from portway.api.uploads import Form, multipart_form
from portway.config.compat import PlatformCompat
from portway.errors import PortwayError, UpstreamError, UpstreamTimeout, ValidationError
from portway.identity.auth import Principal
from portway.providers.media import Task, Upload
from portway.runtime import Runtime

ENDPOINT = "compat.platform"
# The seed's default model per task (its app/utils/config.py).
DEFAULT_MODELS = {
    "image": "stabilityai/stable-diffusion-3-medium",
    "edit": "runwayml/stable-diffusion-inpainting",
    "tts": "espnet/kan-bayashi_ljspeech_vits",
    "stt": "openai/whisper-base",
    "llm": "mistralai/Mistral-7B-Instruct-v0.1",
    "embedding": "sentence-transformers/all-MiniLM-L6-v2",
    "text_to_video": "damo-vilab/text-to-video-ms-1.7b",
    "image_to_video": "damo-vilab/image-to-video-ms-1.7b",
}
_CODES = {  # portway's code -> the seed's error_code
    "invalid_api_key": "INVALID_API_KEY",
    "model_not_found": "MODEL_NOT_FOUND",
    "upstream_timeout": "TIMEOUT_ERROR",
    "validation_error": "VALIDATION_ERROR",
}
_DIFFUSION = ("num_inference_steps", "guidance_scale", "negative_prompt", "seed")


def error_code(err: PortwayError) -> str:
    if isinstance(err, UpstreamTimeout):
        return "TIMEOUT_ERROR"
    if err.status_code == 404:  # portway's unknown model, or the upstream's
        return "MODEL_NOT_FOUND"
    if isinstance(err, UpstreamError) or err.code.startswith("upstream"):
        return "HUGGINGFACE_API_ERROR"
    return _CODES.get(err.code, err.code.upper())


def render(err: PortwayError) -> Response:
    status = err.status_code
    return json_bytes({"detail": err.message, "error_code": error_code(err), "status_code": status}, status)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name}: a non-empty string is required", param=name)
    return value


def _numbers(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str):  # multipart fields are text
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                raise ValidationError(f"{name}: must be a number", param=name) from None
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValidationError(f"{name}: must be a non-negative number", param=name)
        out[name] = value
    return out


def _fields(form: Form) -> dict[str, Any]:
    return {k: v[-1] if isinstance(v, list) else v for k, v in form.fields.items()}


def _one(form: Form, name: str, as_field: str | None = None) -> Upload:
    files = form.file(name)
    if len(files) != 1 or files[0].size == 0:
        raise ValidationError(f"{name}: one non-empty file is required", param=name)
    return dataclasses.replace(files[0], field=as_field) if as_field else files[0]


# The multipart routes (full paths, the router's /api included): server.max_upload_bytes applies to them.
UPLOADS = frozenset({"/api/edit-image", "/api/stt", "/api/video/image-to-video"})


def build(section: PlatformCompat, rt: Runtime) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["compat: platform"])
    spec = anonymous_spec(None, rt.cfg.limits.per_ip)

    def model_of(body: dict[str, Any], task: str) -> tuple[str, str]:
        """(the seed's model id, what portway is asked): the body's `model` or the task's default."""
        given = body.get("model")
        seed_id = given if isinstance(given, str) and given else DEFAULT_MODELS[task]
        return seed_id, model_name(rt, seed_id, section.provider)

    async def who(request: Request) -> Principal:
        return await caller(request, "platform", section.auth, spec)

    async def run(
        request: Request,
        principal: Principal,
        task: Task,
        payload: dict[str, Any],
        size: int,
        files: list[Upload],
    ) -> tuple[bytes, str, dict[str, str], float] | None:
        started = time.monotonic()
        reply = await media(request, principal, task, payload, size, ENDPOINT, files)
        if reply is None:
            return None
        headers = served_headers(reply.provider, reply.model, reply.headers)
        return reply.body or b"", reply.content_type, headers, round(time.monotonic() - started, 3)

    async def image_answer(
        request: Request,
        principal: Principal,
        task: Task,
        payload: dict[str, Any],
        seed_id: str,
        size: int,
        files: list[Upload],
    ) -> Response:
        done = await run(request, principal, task, payload, size, files)
        if done is None:
            return GONE
        body, _, headers, took = done
        image = orjson.loads(body)["data"][0]["b64_json"]
        answer = {
            "image": image,
            "model": seed_id,
            "generation_time": took,
            "size": len(base64.b64decode(image)),
        }
        return json_bytes(answer, 200, headers)

    @router.post("/image", summary="AI Platform: text-to-image")
    @errors(render)
    async def image(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        seed_id, model = model_of(body, "image")
        payload: dict[str, Any] = {
            "model": model,
            "prompt": _text(body, "prompt"),
            "response_format": "b64_json",
        }
        payload.update(_numbers(body, _DIFFUSION))
        dims = _numbers(body, ("width", "height"))
        if dims:
            payload["size"] = f"{int(dims.get('width', 512))}x{int(dims.get('height', 512))}"
        return await image_answer(request, principal, Task.IMAGE_GENERATION, payload, seed_id, size, [])

    @router.post("/edit-image", summary="AI Platform: inpainting (multipart image, mask, prompt, model)")
    @errors(render)
    async def edit_image(request: Request) -> Response:
        async def serve(principal: Principal, form: Form) -> Response:
            fields = _fields(form)
            seed_id, model = model_of(fields, "edit")
            payload = {"model": model, "prompt": _text(fields, "prompt"), "response_format": "b64_json"}
            payload.update(_numbers(fields, _DIFFUSION))
            files = [_one(form, "image"), *form.file("mask")[:1]]
            return await image_answer(request, principal, Task.IMAGE_EDIT, payload, seed_id, form.size, files)

        return await _multipart(request, await who(request), serve)

    @router.post("/llm", summary="AI Platform: chat (messages, model, max_tokens, temperature)")
    @errors(render)
    async def llm(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValidationError(
                "messages: a non-empty array of message objects is required", param="messages"
            )
        seed_id, model = model_of(body, "llm")
        payload = {
            "model": model,
            "messages": messages,
            **_numbers(body, ("max_tokens", "temperature", "top_p")),
        }
        if "max_tokens" in payload:
            payload["max_tokens"] = int(payload["max_tokens"])
        started = time.monotonic()
        reply = await chat(request, principal, payload, size, ENDPOINT)
        if reply is None:
            return GONE
        completion = orjson.loads(reply.body or b"{}")
        choices = completion.get("choices") or [{}]
        answer = {
            "response": (choices[0].get("message") or {}).get("content") or "",
            "model": seed_id,
            "generation_time": round(time.monotonic() - started, 3),
            "usage": completion.get("usage"),
        }
        return json_bytes(answer, 200, served_headers(reply.provider, reply.model, reply.headers))

    @router.post("/tts", summary="AI Platform: text-to-speech (audio bytes)")
    @errors(render)
    async def tts(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        _, model = model_of(body, "tts")
        payload = {"model": model, "input": _text(body, "text"), "voice": "alloy", "response_format": "wav"}
        done = await run(request, principal, Task.SPEECH, payload, size, [])
        if done is None:
            return GONE
        audio, content_type, headers, _ = done
        return Response(audio, headers=headers, media_type=content_type)

    @router.post("/stt", summary="AI Platform: speech-to-text (multipart audio, model)")
    @errors(render)
    async def stt(request: Request) -> Response:
        async def serve(principal: Principal, form: Form) -> Response:
            seed_id, model = model_of(_fields(form), "stt")
            audio = _one(form, "audio", as_field="file")
            payload = {"model": model, "response_format": "json"}
            done = await run(request, principal, Task.TRANSCRIPTION, payload, form.size, [audio])
            if done is None:
                return GONE
            body, _, headers, took = done
            text = orjson.loads(body).get("text", "")
            return json_bytes({"text": text, "model": seed_id, "generation_time": took}, 200, headers)

        return await _multipart(request, await who(request), serve)

    @router.post("/embedding", summary="AI Platform: text embedding (text, model)")
    @errors(render)
    async def embedding(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        seed_id, model = model_of(body, "embedding")
        payload = {"model": model, "input": _text(body, "text")}
        done = await run(request, principal, Task.EMBEDDINGS, payload, size, [])
        if done is None:
            return GONE
        data, _, headers, took = done
        vector = orjson.loads(data)["data"][0]["embedding"]
        answer = {"embedding": vector, "model": seed_id, "dimensions": len(vector), "generation_time": took}
        return json_bytes(answer, 200, headers)

    async def video_answer(
        request: Request,
        principal: Principal,
        payload: dict[str, Any],
        seed_id: str,
        size: int,
        files: list[Upload],
    ) -> Response:
        done = await run(request, principal, Task.VIDEO, payload, size, files)
        if done is None:
            return GONE
        data, content_type, headers, took = done
        answer = {
            "video": base64.b64encode(data).decode("ascii"),
            "content_type": content_type,
            "model": seed_id,
            "generation_time": took,
            "size": len(data),
        }
        return json_bytes(answer, 200, headers)

    def video_payload(body: dict[str, Any], model: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model, "prompt": _text(body, "prompt")}
        knobs = _numbers(body, ("duration", "fps", "num_inference_steps", "guidance_scale"))
        if "duration" in knobs:
            payload["seconds"] = str(knobs.pop("duration"))
        return {**payload, **knobs}

    @router.post("/video/text-to-video", summary="AI Platform: text-to-video")
    @errors(render)
    async def text_to_video(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        seed_id, model = model_of(body, "text_to_video")
        return await video_answer(request, principal, video_payload(body, model), seed_id, size, [])

    @router.post(
        "/video/image-to-video", summary="AI Platform: image-to-video (multipart image, prompt, model)"
    )
    @errors(render)
    async def image_to_video(request: Request) -> Response:
        async def serve(principal: Principal, form: Form) -> Response:
            fields = _fields(form)
            seed_id, model = model_of(fields, "image_to_video")
            reference = _one(form, "image", as_field="input_reference")
            payload = video_payload(fields, model)
            return await video_answer(request, principal, payload, seed_id, form.size, [reference])

        return await _multipart(request, await who(request), serve)

    return router


async def _multipart(
    request: Request, principal: Principal, serve: Callable[[Principal, Form], Awaitable[Response]]
) -> Response:
    """Authenticated first, then the upload parsed to files that exist while `serve` runs."""
    rt = runtime(request)
    try:
        async with multipart_form(
            request, limit=rt.cfg.server.max_upload_bytes, root=rt.settings.data_dir / "uploads"
        ) as form:
            return await serve(principal, form)
    except ClientDisconnect:
        return GONE
