"""GET /metrics: the Prometheus text exposition (telemetry/metrics.py).

Needs the master key or an admin user's token, like /admin/*, except for requests that arrive on one of
`metrics.open_on`'s local addresses (the socket the connection came in on, not anything the client says):
a Prometheus on the same host scrapes 127.0.0.1 without a key while the public address still needs one.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.auth import require_admin
from portway.api.common import runtime
from portway.errors import NotFound
from portway.telemetry.metrics import CONTENT_TYPE, exposition, multiprocess_dir

router = APIRouter(tags=["ops"])


def _open(request: Request, open_on: list[str]) -> bool:
    server = request.scope.get("server")
    if not open_on or not server:
        return False
    host, port = server[0], server[1]
    return f"{host}:{port}" in open_on or f"[{host}]:{port}" in open_on


@router.get("/metrics", summary="Prometheus metrics (admin key, or open on metrics.open_on)")
async def metrics(request: Request) -> Response:
    rt = runtime(request)
    cfg = rt.cfg.metrics
    if not cfg.enabled or rt.sampler is None:
        raise NotFound("Metrics are disabled (metrics.enabled: false)")
    if not _open(request, cfg.open_on):
        await require_admin(request)
    rt.sampler.sample()  # this worker's state gauges, fresh
    # Other workers' files are read from disk: off the event loop.
    body = exposition() if multiprocess_dir() is None else await asyncio.to_thread(exposition)
    return Response(body, media_type=CONTENT_TYPE)
