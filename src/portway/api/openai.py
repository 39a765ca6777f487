"""The OpenAI-compatible surface: /v1/chat/completions and /v1/models."""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from portway.api.common import authenticate, gateway, json_response, read_body
from portway.api.validation import parse_json_object, validate_chat
from portway.errors import ModelNotFound
from portway.services.chat import RequestContext

router = APIRouter(tags=["openai"])
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CREATED = int(time.time())


@router.post("/v1/chat/completions", summary="Create a chat completion (OpenAI-compatible)")
async def chat_completions(request: Request) -> Response:
    started = time.monotonic()
    principal = await authenticate(request)
    gw = gateway(request)
    raw = await read_body(request, gw.cfg.server.max_body_bytes)
    body = validate_chat(parse_json_object(raw))
    request_id = request.headers.get("x-request-id") or os.urandom(8).hex()
    client_ip = request.client.host if request.client else None
    reply = await gw.chat.chat(body, RequestContext(request_id, principal, started, client_ip, len(raw)))
    headers = {
        "x-portway-provider": reply.provider,
        "x-portway-model": reply.model,
        "x-request-id": request_id,
        **(reply.headers or {}),
    }
    if reply.stream is not None:
        return StreamingResponse(
            reply.stream, media_type="text/event-stream", headers={**headers, **_STREAM_HEADERS}
        )
    return Response(reply.body, media_type="application/json", headers=headers)


def _model_obj(model_id: str, owned_by: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": owned_by}


@router.get("/v1/models", summary="List aliases and configured models")
async def list_models(request: Request) -> Response:
    await authenticate(request)
    data = [_model_obj(mid, owner) for mid, owner in gateway(request).router.model_ids()]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}", summary="Retrieve one model or alias")
async def get_model(model_id: str, request: Request) -> Response:
    await authenticate(request)
    for mid, owner in gateway(request).router.model_ids():
        if mid == model_id:
            return json_response(_model_obj(mid, owner))
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")
