"""Helpers the FastAPI routes use: the assembled gateway, authentication, JSON bytes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from portway.services.auth import Principal, bearer_token
from portway.services.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def authenticate(request: Request) -> Principal:
    h = request.headers
    return await gateway(request).auth.authenticate(bearer_token(h.get("authorization"), h.get("x-api-key")))


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")
