"""GET /v1/models (OpenAI's list, with filters) and GET /v1/catalog (the grouped catalog with prices).

Both answer from the catalog in memory (services/catalog.py): never an upstream call on the request path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from portway.api.common import authenticate, json_response, runtime
from portway.errors import ModelNotFound
from portway.services.catalog import CatalogModel

router = APIRouter(tags=["openai"])

_Provider = Annotated[str | None, Query(max_length=64, description="only this provider's models")]
_Modality = Annotated[
    str | None, Query(max_length=32, description="only models taking or giving it: text, image, audio...")
]
_Free = Annotated[bool | None, Query(description="true: only free models; false: only paid ones")]


def _model_obj(m: CatalogModel) -> dict[str, object]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.provider}


@router.get("/v1/models", summary="List aliases and models (filters: provider, modality, free)")
async def list_models(
    request: Request, provider: _Provider = None, modality: _Modality = None, free: _Free = None
) -> Response:
    await authenticate(request)
    models = await runtime(request).catalog.models(provider, modality and modality.lower(), free)
    return json_response({"object": "list", "data": [_model_obj(m) for m in models]})


@router.get("/v1/models/{model_id:path}", summary="Retrieve one model or alias")
async def get_model(model_id: str, request: Request) -> Response:
    await authenticate(request)
    for m in await runtime(request).catalog.models():
        if m.id == model_id:
            return json_response(_model_obj(m))
    raise ModelNotFound(f"The model {model_id!r} does not exist", param="model")


@router.get("/v1/catalog", summary="The model catalog: grouped, with prices and stats (seed 001's shape)")
async def get_catalog(
    request: Request, provider: _Provider = None, modality: _Modality = None, free: _Free = None
) -> Response:
    await authenticate(request)
    catalog = runtime(request).catalog
    models = await catalog.models(provider, modality and modality.lower(), free)
    return json_response({"object": "catalog", **(await catalog.grouping(models))})
