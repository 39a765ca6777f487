"""Login (JWT for users) and `GET /v1/me`, plus the principal/admin helpers the admin router uses."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, json_response, runtime
from portway.errors import PermissionDenied
from portway.identity.auth import Principal
from portway.identity.models import LoginRequest
from portway.identity.service import Identity
from portway.limits.counters import Counters

router = APIRouter(tags=["auth"])
NO_STORE = {"Cache-Control": "no-store"}  # responses carrying a secret must not be cached anywhere


def identity(request: Request) -> Identity:
    return runtime(request).identity


def counters(request: Request) -> Counters:
    return runtime(request).counters


async def require_admin(request: Request) -> Principal:
    """Master key or an admin user's JWT; 401 without valid credentials, 403 for anyone else."""
    principal = await authenticate(request)
    if not principal.is_admin:
        raise PermissionDenied("This endpoint needs the master key or an admin user's token")
    return principal


@router.post("/auth/login", summary="Exchange email (+ password) for a bearer access token (JWT)")
async def login(body: LoginRequest, request: Request) -> Response:
    return json_response(await identity(request).login(body), headers=NO_STORE)


@router.get("/v1/me", summary="Who am I: principal, key, user and current usage against limits")
async def me(request: Request) -> Response:
    principal = await authenticate(request)
    # The limits admission enforces (key, user or limits.per_user); per-IP limits are not the caller's own.
    limits = runtime(request).admission.limits(principal, None)
    return json_response(await identity(request).me(principal, counters(request), limits))
