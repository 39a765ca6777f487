"""Helpers every route uses: the assembled gateway, authentication, bounded body reading, JSON bytes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from portway.errors import PayloadTooLarge, ValidationError
from portway.services.auth import Principal, bearer_token
from portway.services.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def authenticate(request: Request) -> Principal:
    h = request.headers
    return await gateway(request).auth.authenticate(bearer_token(h.get("authorization"), h.get("x-api-key")))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early (413) when it is larger than `limit`, declared or not."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")
