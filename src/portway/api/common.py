"""Helpers the FastAPI routes use: the worker's runtime, authentication, JSON bytes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from portway.identity.auth import Principal, bearer_token
from portway.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authenticate(request: Request) -> Principal:
    h = request.headers
    return await runtime(request).auth.authenticate(bearer_token(h.get("authorization"), h.get("x-api-key")))


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")
