"""The admin API (`/admin/*`): virtual keys, rotating-key policies, users, usage.

Every route needs the master key or an admin user's JWT (router-level dependency, so a new route cannot
forget it): no/invalid credentials → 401, a normal key or non-admin user → 403. Plaintext keys appear
only in the responses of key creation, key rotation and the rotating policy's current key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from portway.api.auth import NO_STORE, counters, identity, require_admin
from portway.api.common import json_response, runtime
from portway.identity.keys import key_json
from portway.identity.models import KeyCreate, KeyUpdate, PolicyCreate, UserCreate, UserUpdate
from portway.identity.rotation import policy_json

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

PageLimit = Query(50, ge=1, le=500, description="page size")
# Bounded where parsed: an offset past 64 bits (or an id with a NUL, which Postgres refuses) would otherwise
# reach the database and come back as a 500.
PageOffset = Query(0, ge=0, le=2**31 - 1, description="items to skip")
_NO_NUL = r"^[^\x00]*$"
Ident = Annotated[str, Path(max_length=256, pattern=_NO_NUL)]
Filter = Annotated[str | None, Query(max_length=320, pattern=_NO_NUL)]


def _page(data: Sequence[dict[str, Any]], total: int, limit: int, offset: int) -> Response:
    return json_response(
        {"object": "list", "data": list(data), "total": total, "limit": limit, "offset": offset}
    )


# -- virtual keys ---------------------------------------------------------------------------------------


@router.post("/keys", status_code=201, summary="Create a virtual key (the key is shown only here)")
async def create_key(body: KeyCreate, request: Request) -> Response:
    row, plaintext = await identity(request).keys.create(body)
    return json_response({**key_json(row), "key": plaintext}, status=201, headers=NO_STORE)


@router.get("/keys", summary="List virtual keys (never the key itself)")
async def list_keys(
    request: Request,
    limit: int = PageLimit,
    offset: int = PageOffset,
    user_id: Filter = None,
    name: Filter = None,
    revoked: bool | None = None,
) -> Response:
    rows, total = await identity(request).keys.page(
        limit=limit, offset=offset, user_id=user_id, name=name, revoked=revoked
    )
    now = time.time()
    return _page([key_json(r, now) for r in rows], total, limit, offset)


# Declared before /keys/{key_id}, which would otherwise take "current" for a key id.
@router.get("/keys/current", summary="The current key of a rotating key policy (plaintext)")
async def current_key(
    request: Request, policy: str = Query(min_length=1, max_length=128, pattern=_NO_NUL)
) -> Response:
    return json_response(await identity(request).rotation.current(policy), headers=NO_STORE)


@router.get("/keys/{key_id}", summary="One virtual key")
async def get_key(key_id: Ident, request: Request) -> Response:
    return json_response(key_json(await identity(request).keys.get(key_id)))


@router.patch(
    "/keys/{key_id}", summary="Change a key's name, limits, allowed models, expiry, metadata or cache"
)
async def update_key(key_id: Ident, body: KeyUpdate, request: Request) -> Response:
    return json_response(key_json(await identity(request).keys.update(key_id, body)))


@router.post("/keys/{key_id}/revoke", summary="Revoke a key (takes effect at once on this replica)")
async def revoke_key(key_id: Ident, request: Request) -> Response:
    return json_response(key_json(await identity(request).keys.revoke(key_id)))


@router.post("/keys/{key_id}/rotate", status_code=201, summary="Revoke a key and issue a replacement")
async def rotate_key(key_id: Ident, request: Request) -> Response:
    row, plaintext = await identity(request).keys.rotate(key_id)
    return json_response({**key_json(row), "key": plaintext}, status=201, headers=NO_STORE)


@router.get("/keys/{key_id}/usage", summary="A key's usage against its limits")
async def key_usage(key_id: Ident, request: Request) -> Response:
    return json_response(await identity(request).key_usage(key_id, counters(request)))


# -- rotating-key policies ------------------------------------------------------------------------------


@router.post("/key-policies", status_code=201, summary="Create a rotating key policy (returns its first key)")
async def create_policy(body: PolicyCreate, request: Request) -> Response:
    policy, key, plaintext = await identity(request).rotation.create_policy(body)
    return json_response({**policy_json(policy), "key_id": key.id, "api_key": plaintext}, 201, NO_STORE)


@router.get("/key-policies", summary="List rotating key policies")
async def list_policies(request: Request, limit: int = PageLimit, offset: int = PageOffset) -> Response:
    rows, total = await identity(request).store.list_policies(limit=limit, offset=offset)
    return _page([policy_json(p) for p in rows], total, limit, offset)


@router.get("/key-policies/{name}", summary="One rotating key policy (without its key)")
async def get_policy(name: Ident, request: Request) -> Response:
    return json_response(policy_json(await identity(request).rotation.get(name)))


@router.post("/key-policies/{name}/rotate", summary="Rotate a policy's key now (e.g. after a leak)")
async def rotate_policy(name: Ident, request: Request) -> Response:
    rotation = identity(request).rotation
    await rotation.rotate(await rotation.get(name))  # losing a race to another replica is fine too
    return json_response(await rotation.current(name), headers=NO_STORE)


# -- users ------------------------------------------------------------------------------------------------


@router.post("/users", status_code=201, summary="Create a user")
async def create_user(body: UserCreate, request: Request) -> Response:
    users = identity(request).users
    return json_response(users.to_json(await users.create(body)), status=201)


@router.get("/users", summary="List users")
async def list_users(
    request: Request, limit: int = PageLimit, offset: int = PageOffset, email: Filter = None
) -> Response:
    users = identity(request).users
    rows, total = await users.page(limit=limit, offset=offset, email=email.strip().lower() if email else None)
    return _page([users.to_json(u) for u in rows], total, limit, offset)


@router.get("/users/{user_id}", summary="One user")
async def get_user(user_id: Ident, request: Request) -> Response:
    users = identity(request).users
    return json_response(users.to_json(await users.get(user_id)))


@router.patch("/users/{user_id}", summary="Change a user's email, password, admin/disabled flags or limits")
async def update_user(user_id: Ident, body: UserUpdate, request: Request) -> Response:
    users = identity(request).users
    return json_response(users.to_json(await users.update(user_id, body)))


@router.get("/users/{user_id}/usage", summary="A user's usage against their limits")
async def user_usage(user_id: Ident, request: Request) -> Response:
    default = runtime(request).admission.per_user  # what admission applies to a user without limits
    return json_response(await identity(request).user_usage(user_id, counters(request), default))
