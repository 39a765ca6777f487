"""create_app(settings, config) -> the ASGI app. The lifespan opens and closes everything once per worker."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from portway import __version__
from portway.api import admin, auth, compat, docs, files, media, openai, ops, videos
from portway.api import catalog as catalog_api
from portway.api import completions as legacy_completions
from portway.api import messages as anthropic_messages
from portway.api import metrics as metrics_api
from portway.api import responses as responses_api
from portway.api import search as search_api
from portway.api import sessions as sessions_api
from portway.api import status as status_api
from portway.api import usage as usage_api
from portway.api.access import RequestTelemetry
from portway.api.chat_asgi import OPENAPI_PATH, ChatCompletionsApp
from portway.api.middleware import AdmissionControl, BodyLimit
from portway.api.uploads import UPLOAD_PATHS, sweep_stale
from portway.config import GatewayConfig, load_config
from portway.errors import MethodNotAllowed, NotFound, PortwayError, ValidationError
from portway.runtime import Runtime
from portway.settings import Settings

log = logging.getLogger("portway")


def _render(err: PortwayError) -> Response:
    status, headers, body = err.render()
    response = Response(body, status_code=status)
    response.raw_headers = headers  # the renderer's own, content-type and content-length included
    return response


async def _portway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortwayError)
    return _render(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return _render(MethodNotAllowed("Method not allowed for this path"))
    if exc.status_code == 404:
        return _render(NotFound("Unknown path"))
    err = PortwayError(str(exc.detail), status=exc.status_code)
    return _render(err)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return _render(ValidationError(f"{field or 'request'}: {first.get('msg', 'invalid')}", param=field))


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Never a stack trace to the client: the log has it.
    log.exception("unhandled error", exc_info=exc)
    return _render(PortwayError("Internal server error"))


def _document(app: FastAPI, path: str, item: dict[str, Any]) -> None:
    """Add a pure-ASGI route's description to the generated OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema["paths"].setdefault(path, item)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, cfg: GatewayConfig | None = None) -> FastAPI:
    settings = settings or Settings()
    cfg = cfg or load_config(settings.config)
    rt = Runtime(settings, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        await asyncio.to_thread(sweep_stale, settings.data_dir / "uploads")  # a killed worker's leftovers
        # Everything loaded so far lives as long as the worker: take it out of the cyclic GC's reach, so a
        # full collection walks what requests allocate, not ~hundreds of thousands of module objects
        # (a full collection over those was a multi-millisecond stall, seen in the c=1 latency tail).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await rt.aclose()

    app = FastAPI(
        title="portway",
        version=__version__,
        description="A self-hosted, OpenAI-compatible AI gateway.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their assets from a CDN: api/docs.py serves them offline
        redoc_url=None,
    )
    app.state.runtime = rt
    app.include_router(openai.router)
    app.include_router(catalog_api.router)  # /v1/models, /v1/catalog
    app.include_router(legacy_completions.router)
    app.include_router(anthropic_messages.router)
    app.include_router(responses_api.router)
    app.include_router(sessions_api.router)
    app.include_router(media.router)
    app.include_router(videos.router)
    app.include_router(files.router)
    app.include_router(ops.router)
    app.include_router(metrics_api.router)
    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(usage_api.router)
    app.include_router(status_api.router)
    app.include_router(search_api.router)
    app.include_router(docs.router)
    # Last: a seed's routes at the root (cheppu's `/`) shadow nothing.
    app.state.compat = compat.mount(app, cfg.compat)
    app.add_exception_handler(PortwayError, _portway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    _document(app, "/v1/chat/completions", OPENAPI_PATH)
    return app


def create_asgi(settings: Settings | None = None, cfg: GatewayConfig | None = None) -> ASGIApp:
    """The app portway serves: its own thin door in front of FastAPI.

    The door bounds the requests in flight and hands the hot route straight to its pure-ASGI handler, so a
    chat completion never pays for the framework's middleware (error, telemetry, body-limit, exception,
    routing). Everything else, and the lifespan, goes to FastAPI behind `BodyLimit`, so that no route reads
    more than `server.max_body_bytes` (the hot route caps its own body as it reads it). CORS, when
    configured, wraps both.
    """
    settings = settings or Settings()
    cfg = cfg or load_config(settings.config)
    api = create_app(settings, cfg)
    fast: dict[str, ASGIApp] = {"/v1/chat/completions": ChatCompletionsApp(api.state.runtime)}
    limited = BodyLimit(api, cfg.server.max_body_bytes)
    # Multipart media uploads get their own, larger cap (server.max_upload_bytes) instead of the body cap.
    uploads = BodyLimit(api, cfg.server.max_upload_bytes)
    fast.update(dict.fromkeys(UPLOAD_PATHS, uploads))
    mounted: compat.Mounted = api.state.compat  # the seed surfaces: bounded and capped like /v1
    fast.update(dict.fromkeys(mounted.uploads, uploads))
    control = AdmissionControl(limited, cfg.server.max_in_flight, fast=fast, paths=mounted.paths)
    rt: Runtime = api.state.runtime
    if rt.sampler is not None:
        rt.sampler.door = control  # portway_in_flight_requests reads its counter when sampled
    door: ASGIApp = control
    if cfg.server.cors_origins:
        door = CORSMiddleware(
            door,
            allow_origins=cfg.server.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "x-portway-session",
                "x-portway-history",
            ],
            expose_headers=["x-portway-provider", "x-portway-model", "x-request-id"],
        )
    # Outermost: the request id (and the access line, the trace span) covers every answer, 503s included.
    return RequestTelemetry(door, tracer=rt.tracer, access=settings.log_format == "json")


def app_from_env() -> ASGIApp:
    """Factory for `uvicorn --factory portway.app:app_from_env` and multi-worker serving."""
    return create_asgi()
