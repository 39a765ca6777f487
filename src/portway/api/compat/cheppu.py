"""Seed 000, Cheppu AI: `POST /` by `type` (chat, image, audio) and `GET /` (what the server offers).

Chat asks the request's `model`, then `chat_fallbacks`, in one ChatService call (the attempt loop's
fallback: a 401 sets the provider's key aside, so the rest of a one-provider chain is skipped), and answers
the upstream's chat completion with `used_model` added. Image and audio send `model` + `inputs` to the
media provider and answer the bytes as `image/png` / `audio/wav`. Errors are the seed's
`{"error": "...", ...}` bodies. `GET /health` is the shared one (api/ops.py).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

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
    usable,
)
from portway.config.compat import CheppuCompat
from portway.errors import PortwayError, UpstreamBadRequest, UpstreamError
from portway.providers.media import Task
from portway.runtime import Runtime

ENDPOINT = "compat.cheppu"
UNAVAILABLE = "All AI models are currently unavailable. Please try again later."
MISSING = "Missing required fields: model and inputs"
# What the seed sends upstream with every chat (the client's own values win when it gives them).
CHAT_DEFAULTS = {"temperature": 0.7, "max_tokens": 4096}
_MEDIA = {"image": (Task.IMAGE_GENERATION, "image/png"), "audio": (Task.SPEECH, "audio/wav")}


def render(err: PortwayError) -> Response:
    """The seed's error bodies: every upstream failure is its 500 "all models unavailable"."""
    if isinstance(err, UpstreamError):
        return json_bytes({"error": UNAVAILABLE, "details": err.message}, 500)
    return json_bytes({"error": err.message, "code": err.code}, err.status_code)


def build(section: CheppuCompat, rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["compat: cheppu"])
    spec = anonymous_spec(None, rt.cfg.limits.per_ip)
    fallbacks = usable(rt, section.chat_fallbacks)
    # Seed model ids are Groq's: a bare id goes to the fallbacks' provider (else the media provider's).
    chat_provider = next((f.partition("/")[0] for f in fallbacks if "/" in f), section.media_provider)

    @router.get("/", summary="Cheppu AI: server status and endpoints")
    async def status() -> Response:
        endpoints = {"proxy": "POST /", "health": "GET /health"}
        body = {"status": "running", "message": "Cheppu AI Chatbot Proxy Server", "endpoints": endpoints}
        return json_bytes(body, 200)

    @router.post("/", summary="Cheppu AI: chat, image or audio, by `type`")
    @errors(render)
    async def proxy(request: Request) -> Response:
        principal = await caller(request, "cheppu", section.auth, spec)
        body, size = await json_body(request)
        kind, model = body.get("type"), body.get("model")
        if kind == "chat" or body.get("messages") is not None:
            return await _chat(request, principal, body, size)
        inputs = body.get("inputs")
        if not isinstance(model, str) or not model or not isinstance(inputs, str) or not inputs:
            return json_bytes({"error": MISSING}, 400)
        task, content_type = _MEDIA.get(kind if isinstance(kind, str) else "", (Task.SPEECH, None))
        payload = _media_payload(task, model_name(rt, model, section.media_provider), inputs)
        reply = await media(request, principal, task, payload, size, ENDPOINT)
        if reply is None:
            return GONE
        data = reply.body or b""
        if task is Task.IMAGE_GENERATION:
            data = base64.b64decode(orjson.loads(data)["data"][0]["b64_json"])
        headers = served_headers(reply.provider, reply.model, reply.headers)
        return Response(data, headers=headers, media_type=content_type or reply.content_type)

    async def _chat(request: Request, principal: Any, body: dict[str, Any], size: int) -> Response:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return json_bytes({"error": "Missing required field: messages"}, 400)
        requested = body.get("model")
        chain = list(fallbacks)
        if isinstance(requested, str) and requested:
            first = requested if requested in fallbacks else model_name(rt, requested, chat_provider)
            chain = [first, *(f for f in fallbacks if f != first)]
        if not chain:
            return json_bytes({"error": UNAVAILABLE, "details": "no chat model is configured"}, 500)
        extra = {k: body[k] for k in CHAT_DEFAULTS if isinstance(body.get(k), int | float)}
        payload = {**CHAT_DEFAULTS, **extra, "model": chain[0], "models": chain[1:], "messages": messages}
        try:
            reply = await chat(request, principal, payload, size, ENDPOINT)
        except UpstreamBadRequest as err:
            # The seed tries the next model whatever the first one's refusal (a model the upstream does
            # not know is a 404); portway returns a refusal at once, so ask the fallbacks alone, once.
            if err.status_code != 404 or len(chain) < 2:
                raise
            payload = {**payload, "model": chain[1], "models": chain[2:]}
            reply = await chat(request, principal, payload, size, ENDPOINT)
        if reply is None:
            return GONE
        answer = orjson.loads(reply.body or b"{}")
        answer["used_model"] = reply.model  # the upstream id that answered, as the seed names it
        return json_bytes(answer, 200, served_headers(reply.provider, reply.model, reply.headers))

    if section.prefix:
        # The seed's 404 for any other path. Only under a prefix: at the root it would take every unknown
        # path (and the 405s of known ones) from the rest of portway.
        @router.api_route(
            "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
        )
        async def not_found(path: str) -> Response:
            return json_bytes({"error": "Not found"}, 404)

    return router


def _media_payload(task: Task, model: str, inputs: str) -> dict[str, Any]:
    if task is Task.IMAGE_GENERATION:
        return {"model": model, "prompt": inputs, "response_format": "b64_json"}
    return {"model": model, "input": inputs, "voice": "alloy", "response_format": "wav"}
