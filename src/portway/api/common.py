"""Helpers the routes use: the worker's runtime, authentication, JSON bytes, the client's address."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from portway.api.departure import Departure
from portway.identity.auth import Principal, bearer_token
from portway.runtime import Runtime
from portway.services.cache import HEADER as CACHE_HEADER
from portway.services.cache import request_mode
from portway.services.chat import ChatReply, RequestContext
from portway.services.history import named_session
from portway.services.media import MediaReply
from portway.telemetry.logs import REQUEST_ID, new_request_id
from portway.usage.cost import COST_HEADER, cost_header


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authenticate(request: Request) -> Principal:
    h = request.headers
    return await runtime(request).auth.authenticate(bearer_token(h.get("authorization"), h.get("x-api-key")))


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1, also for matching IPv4 CIDRs
    return ip


class ClientAddress:
    """The client's IP for per-IP limits, given `server.trusted_proxies`.

    A connection from a trusted proxy is counted as the rightmost X-Forwarded-For address that is not
    itself a trusted proxy: everything left of that was written by the client and proves nothing. From
    any other peer the header is ignored, so a client cannot pick the address it is counted as.
    """

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        # A few load balancers connect over and over: remember which peers they are.
        self._peer_trusted = lru_cache(maxsize=256)(self._peer_is_trusted)

    def _trusted(self, ip: _Address) -> bool:
        return any(ip in net for net in self.networks)

    def _peer_is_trusted(self, peer: str) -> bool:
        ip = _address(peer)
        return ip is not None and self._trusted(ip)

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """`peer` is the connection's address; `headers` the raw ASGI headers (lower-case names)."""
        if peer is None or not self._peer_trusted(peer):
            return peer
        hops = [
            hop
            for name, value in headers
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        client = peer
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                break  # not an address (a proxy wrote "unknown", or garbage): trust no hop beyond it
            client = str(ip)
            if not self._trusted(ip):
                break
        return client


def request_id(request: Request) -> str:
    """The request's id: the one api/access.RequestTelemetry set, or by the same rule (telemetry.logs
    .new_request_id: the client's x-request-id when it is a short printable token, else a fresh one)."""
    rid = REQUEST_ID.get()  # set for every request by api/access.RequestTelemetry
    if rid is None:
        raw = request.headers.get("x-request-id")
        rid = new_request_id(raw.encode("latin-1", "replace") if raw else None)
    return rid


def client_ip(request: Request) -> str | None:
    """The address per-IP limits count this request as (`server.trusted_proxies` applied)."""
    ip = request.client.host if request.client else None
    trusted = runtime(request).cfg.server.trusted_proxies
    if not trusted:
        return ip
    addresses = getattr(request.app.state, "client_address", None)
    if addresses is None:
        addresses = request.app.state.client_address = ClientAddress(trusted)
    resolved: str | None = addresses.resolve(ip, request.scope["headers"])
    return resolved


def request_context(
    request: Request,
    principal: Principal,
    started: float,
    size: int,
    *,
    endpoint: str,
    rid: str | None = None,
) -> RequestContext:
    """What the services record a FastAPI-routed request by (the chat route builds its own, in ASGI)."""
    ctx = RequestContext(
        rid or request_id(request), principal, started, client_ip(request), size, endpoint=endpoint
    )
    ctx.cache_mode = request_mode(request.headers.get(CACHE_HEADER))  # the response cache: force | skip
    session = request.headers.get("x-portway-session")
    if session is not None:  # chat history on the protocols served by chat (responses, messages): header only
        ctx.session, ctx.prepend = named_session({}, session, request.headers.get("x-portway-history"))
    return ctx


async def chat_reply(
    request: Request,
    payload: dict[str, Any],
    ctx: RequestContext,
    messages: dict[str, Any] | None = None,
) -> tuple[ChatReply, Departure] | None:
    """A chat completion through ChatService, cancelled if the client leaves before the answer (recorded by
    the service as 499; None here). A stream is to be sent with `EventStream(..., departure)`, which stays
    armed for it; for any other answer it is disarmed. `messages`: see ChatService.chat."""
    departure = Departure()
    departure.arm(request.scope, request.receive)  # the body is read: `receive` only reports a disconnect
    try:
        reply = await runtime(request).chat.chat(payload, ctx, messages)
    except asyncio.CancelledError:
        if departure.forgive():
            return None
        raise
    except BaseException:
        departure.disarm()
        raise
    if reply.stream is None:
        departure.disarm()
    return reply, departure


def reply_headers(reply: ChatReply | MediaReply, request_id: str) -> dict[str, str]:
    """The headers every answer of a protocol route carries: who served it, the request id, the caller's
    x-ratelimit-*, x-portway-cache (hit or miss, when the response cache was consulted) and, when known
    before the body, its cost."""
    headers = {
        "x-portway-provider": reply.provider,
        "x-portway-model": reply.model,
        "x-request-id": request_id,
        **(reply.headers or {}),
    }
    if isinstance(reply, ChatReply) and reply.cache is not None:
        headers[CACHE_HEADER] = reply.cache
    if reply.cost is not None:
        headers[COST_HEADER] = cost_header(reply.cost)
    return headers
