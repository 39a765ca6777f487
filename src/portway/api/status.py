"""Provider status: `GET /v1/status` (a summary, public unless `status.public: false`) and
`GET /admin/status` (the detail: keys by fingerprint, breakers, models, probes; admins only).

Both come from `rt.status` (services/status.py). Neither ever shows a key, part of one, or an upstream URL.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from portway.api.auth import NO_STORE, require_admin
from portway.api.common import authenticate, json_response, runtime

router = APIRouter(tags=["status"])


@router.get("/v1/status", summary="Provider status: up, degraded or down, uptime over 1 h / 24 h / 7 d")
async def status(request: Request) -> Response:
    rt = runtime(request)
    if not rt.cfg.status.public:
        await authenticate(request)  # any valid key or token
    return json_response(await rt.status.summary(), headers=NO_STORE)


@router.get(
    "/admin/status",
    summary="Provider status in detail: keys, breakers, cool-downs, models, last errors, probes",
    dependencies=[Depends(require_admin)],
)
async def admin_status(request: Request) -> Response:
    return json_response(await runtime(request).status.detail(), headers=NO_STORE)
