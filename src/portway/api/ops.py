"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway import __version__
from portway.api.common import gateway, json_response

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Response:
    return json_response({"status": "ok", "service": "portway", "version": __version__})


@router.get("/ready", summary="Readiness: the stores are reachable")
async def ready(request: Request) -> Response:
    db_ok = await gateway(request).db.ping()
    body = {"ready": db_ok, "checks": {"database": "ok" if db_ok else "unreachable"}}
    return json_response(body, status=200 if db_ok else 503)
