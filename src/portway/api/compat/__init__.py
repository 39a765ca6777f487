"""The seed systems' own APIs, served beside the OpenAI one (docs/compat.md).

One thin module per seed: it reads the seed's request shape, hands it to portway's services (chat, media)
with a `RequestContext` whose endpoint is `compat.<surface>`, and renders the answer and every error in the
seed's shape. Routing, limits, usage records and cost are those of `/v1`: there is no second router,
limiter or usage path here.

`mount(app, cfg)` includes every enabled surface (each is off unless enabled) under its `prefix`. A surface
module exposes `build(section, runtime) -> APIRouter`; adding one is a line in `SURFACES`.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, ParamSpec

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from portway.api.common import authenticate, chat_reply, client_ip, request_context, runtime
from portway.api.departure import Departure
from portway.api.validation import parse_json_object
from portway.config import LimitSpecConfig
from portway.config.compat import CompatConfig
from portway.errors import ModelNotFound, PortwayError
from portway.identity.auth import Principal
from portway.limits.spec import LimitSpec
from portway.providers.media import Task, Upload
from portway.runtime import Runtime
from portway.services.chat import ChatReply
from portway.services.media import MediaReply

# The surfaces in mounting order; each is `portway.api.compat.<name>` with a `build(section, runtime)`.
SURFACES: tuple[str, ...] = ("cheppu", "pasta", "platform", "genz", "keyserver")
# A keyless surface (`auth: none`) with no per-IP limit of its own and no `limits.per_ip`: seed 000's
# documented 30 requests a minute (Groq's free tier), so anonymous callers are never unlimited.
ANONYMOUS_RPM = 30

P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class Mounted:
    """What the enabled surfaces serve: the door (app.create_asgi) bounds these paths' requests in flight
    like /v1's, and gives the multipart ones (a module's `UPLOADS`) `server.max_upload_bytes`."""

    names: tuple[str, ...] = ()
    paths: frozenset[str] = frozenset()
    uploads: frozenset[str] = frozenset()


def mount(app: FastAPI, cfg: CompatConfig) -> Mounted:
    """Include every enabled surface's router under its prefix."""
    rt: Runtime = app.state.runtime
    names: list[str] = []
    paths: set[str] = set()
    uploads: set[str] = set()
    for name in SURFACES:
        section = getattr(cfg, name)
        if not section.enabled:
            continue
        module = importlib.import_module(f"portway.api.compat.{name}")
        router: APIRouter = module.build(section, rt)
        app.include_router(router, prefix=section.prefix)
        names.append(name)
        own = {getattr(route, "path", "") for route in router.routes}
        paths.update(section.prefix + path for path in own)
        uploads.update(section.prefix + path for path in own & getattr(module, "UPLOADS", frozenset()))
    return Mounted(tuple(names), frozenset(paths), frozenset(uploads))


# -- callers -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16_384)
def anonymous(surface: str, ip: str | None, spec: LimitSpec | None) -> Principal:
    """A keyless caller of a surface (`auth: none`), one per client address: its limits (`spec`) are
    counted per IP under the key scope `anon:<surface>:<ip>`, beside `limits.per_ip` when that is set."""
    return Principal(f"anon:{surface}", key_id=f"anon:{surface}:{ip or '-'}", key_limits=spec)


def anonymous_spec(rpm_per_ip: int | None, per_ip: LimitSpecConfig) -> LimitSpec | None:
    """The per-IP limit of a keyless surface: its own `rpm_per_ip`, else `limits.per_ip` (applied by
    admission to every caller already), else ANONYMOUS_RPM."""
    if rpm_per_ip is not None:
        return LimitSpec(rpm=rpm_per_ip)
    if LimitSpec.of(per_ip) is not None:
        return None
    return LimitSpec(rpm=ANONYMOUS_RPM)


async def caller(request: Request, surface: str, auth: str, spec: LimitSpec | None) -> Principal:
    """`auth: key`: a portway key in Authorization / x-api-key; `auth: none`: an anonymous caller."""
    if auth == "key":
        return await authenticate(request)
    return anonymous(surface, client_ip(request), spec)


# -- requests ----------------------------------------------------------------------------------------------


async def json_body(request: Request) -> tuple[dict[str, Any], int]:
    raw = await request.body()
    return parse_json_object(raw), len(raw)


def model_name(rt: Runtime, name: str, provider: str) -> str:
    """A seed's model id as portway names it: an alias (or a `provider/model` the config lists) as it is,
    else the surface's provider's model of that id (seed model ids are their upstream's own)."""
    if name in rt.router.aliases:
        return name
    return f"{provider}/{name}"


def usable(rt: Runtime, names: list[str]) -> list[str]:
    """The names the router can plan (a fallback on a provider without keys is left out, not an error)."""
    out = []
    for name in names:
        try:
            rt.router.resolve(name)
        except ModelNotFound:
            continue
        out.append(name)
    return out


async def ip_gate(request: Request, surface: str, rpm: int) -> None:
    """A surface's own per-IP request rate (seeds 001 and 003 limit every endpoint by address): counted by
    admission under `anon:<surface>-ip:<ip>` (429 with Retry-After when over), then released, so only the
    request count is kept. `limits.per_ip` is not counted again here: the service call counts it."""
    rt = runtime(request)
    spec = _gate_spec(rpm)
    gate = anonymous(f"{surface}-ip", client_ip(request), spec)
    ticket = await rt.admission.reserve(gate, None, tokens=0, cost=0.0)
    await rt.admission.settle(ticket, None, 0.0)


@lru_cache(maxsize=64)
def _gate_spec(rpm: int) -> LimitSpec:
    return LimitSpec(rpm=rpm)


async def chat_events(
    request: Request, principal: Principal, payload: dict[str, Any], size: int, endpoint: str
) -> tuple[ChatReply, Departure] | None:
    """A chat completion through ChatService that may stream: a stream is to be sent with
    `EventStream(..., departure)`, which stays armed for it (None: the client left before an answer)."""
    ctx = request_context(request, principal, time.monotonic(), size, endpoint=endpoint)
    return await chat_reply(request, payload, ctx)


async def _cancellable(request: Request, work: Awaitable[Any]) -> Any:
    """Run a service call, cancelled when the client leaves meanwhile (the service records a 499)."""
    departure = Departure()
    departure.arm(request.scope, request.receive)  # the body is read: `receive` only reports a disconnect
    try:
        return await work
    except asyncio.CancelledError:
        if departure.forgive():
            return None
        raise
    finally:
        departure.disarm()


async def chat(
    request: Request, principal: Principal, payload: dict[str, Any], size: int, endpoint: str
) -> ChatReply | None:
    """A non-stream chat completion through ChatService (None: the client left)."""
    started = time.monotonic()
    ctx = request_context(request, principal, started, size, endpoint=endpoint)
    reply: ChatReply | None = await _cancellable(request, runtime(request).chat.chat(payload, ctx))
    return reply


async def media(
    request: Request,
    principal: Principal,
    task: Task,
    payload: dict[str, Any],
    size: int,
    endpoint: str,
    files: list[Upload] | None = None,
) -> MediaReply | None:
    """One media call through MediaService, its answer read whole (None: the client left)."""
    started = time.monotonic()
    ctx = request_context(request, principal, started, size, endpoint=endpoint)
    work = runtime(request).media.run(task, payload["model"], payload, files or [], ctx)
    reply: MediaReply | None = await _cancellable(request, _whole(work))
    return reply


async def _whole(work: Awaitable[MediaReply]) -> MediaReply:
    reply = await work
    if reply.stream is not None:  # speech is relayed as produced on /v1; the seeds answer whole files
        chunks = [chunk async for chunk in reply.stream]
        reply.body, reply.stream = b"".join(chunks), None
    return reply


def served_headers(provider: str, model: str, extra: dict[str, str] | None) -> dict[str, str]:
    return {"x-portway-provider": provider, "x-portway-model": model, **(extra or {})}


GONE = Response(status_code=499)  # nobody is left to read it


# -- errors ------------------------------------------------------------------------------------------------


def json_bytes(obj: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


def errors(
    render: Callable[[PortwayError], Response],
) -> Callable[[Callable[P, Awaitable[Response]]], Callable[P, Awaitable[Response]]]:
    """Render every PortwayError a route raises in its seed's shape (status and headers kept)."""

    def wrap(route: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
        @wraps(route)
        async def serve(*args: P.args, **kwargs: P.kwargs) -> Response:
            try:
                return await route(*args, **kwargs)
            except PortwayError as err:
                response = render(err)
                for name, value in err.headers.items():  # Retry-After, x-ratelimit-*
                    response.headers[name] = value
                return response

        return serve

    return wrap
