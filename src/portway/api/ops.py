"""Liveness and readiness."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway import __version__
from portway.api.common import json_response, runtime

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> Response:
    # One answer for every client: the seeds' own health checks (docs/compat.md) read `status: "healthy"`,
    # `timestamp`, `version` and `service`.
    body = {"status": "healthy", "service": "portway", "version": __version__}
    body["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json_response(body)


@router.get("/ready", summary="Readiness: the stores are reachable and usage records are being written")
async def ready(request: Request) -> Response:
    rt = runtime(request)
    db_ok = await rt.db.ping()
    # The writer fails readiness only once writes have failed (or one hung) past
    # server.ready_write_failure_seconds: an idle writer is ready however long ago it last wrote.
    writer_ok, writer = rt.usage.health()
    # Redis (when configured) holds readiness back until its pool was first filled, not in a later outage:
    # limits then follow their fail-open policy, and the replica keeps serving.
    redis = rt.counters.status()
    ok = db_ok and writer_ok and redis != "connecting"
    body = {
        "ready": ok,
        "checks": {
            "database": "ok" if db_ok else "unreachable",
            "usage_writer": "ok" if writer_ok else "failing",
            **({} if redis is None else {"redis": redis}),
        },
        "usage_writer": writer,
        "environment": rt.settings.environment,  # what seed 003's clients read beside `ready`
        # Providers still warming up (the local model loading, in the background): they answer once loaded.
        "loading": sorted(rt.loading),
    }
    return json_response(body, status=200 if ok else 503)
