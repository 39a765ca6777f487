"""Login (JWT for users) and `GET /v1/me`, plus the principal/admin helpers the admin router uses."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import json_response
from portway.errors import PermissionDenied
from portway.gateway.limits import Counters
from portway.services.auth import Authenticator, Principal, bearer_token
from portway.services.identity import Identity
from portway.services.identity_models import LoginRequest

router = APIRouter(tags=["auth"])
NO_STORE = {"Cache-Control": "no-store"}  # responses carrying a secret must not be cached anywhere


# The gateway's identity/counters attributes are read through app.state: this module only needs them to
# exist at request time, so it does not depend on how services/gateway.py declares them.
def identity(request: Request) -> Identity:
    ident: Identity = request.app.state.gateway.identity
    return ident


def counters(request: Request) -> Counters:
    ctr: Counters = request.app.state.gateway.counters
    return ctr


async def current_principal(request: Request) -> Principal:
    auth: Authenticator = request.app.state.gateway.auth
    h = request.headers
    return await auth.authenticate(bearer_token(h.get("authorization"), h.get("x-api-key")))


async def require_admin(request: Request) -> Principal:
    """Master key or an admin user's JWT; 401 without valid credentials, 403 for anyone else."""
    principal = await current_principal(request)
    if not principal.is_admin:
        raise PermissionDenied("This endpoint needs the master key or an admin user's token")
    return principal


@router.post("/auth/login", summary="Exchange email (+ password) for a bearer access token (JWT)")
async def login(body: LoginRequest, request: Request) -> Response:
    return json_response(await identity(request).login(body), headers=NO_STORE)


@router.get("/v1/me", summary="Who am I: principal, key, user and current usage against limits")
async def me(request: Request) -> Response:
    principal = await current_principal(request)
    return json_response(await identity(request).me(principal, counters(request)))
