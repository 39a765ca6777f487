"""The OpenAI-compatible surface: /v1/models (chat completions are the pure-ASGI api/chat_asgi.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, json_response, runtime
from portway.errors import ModelNotFound

router = APIRouter(tags=["openai"])
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CREATED = int(time.time())


def _model_obj(model_id: str, owned_by: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": owned_by}


@router.get("/v1/models", summary="List aliases and configured models")
async def list_models(request: Request) -> Response:
    await authenticate(request)
    data = [_model_obj(mid, owner) for mid, owner in runtime(request).router.model_ids()]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}", summary="Retrieve one model or alias")
async def get_model(model_id: str, request: Request) -> Response:
    await authenticate(request)
    for mid, owner in runtime(request).router.model_ids():
        if mid == model_id:
            return json_response(_model_obj(mid, owner))
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")
