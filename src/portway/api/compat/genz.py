"""Seed 003, GenZ AI: `/api/v1/auth/login` (a portway user's JWT), `/api/v1/chat` (tiers fast / balanced /
smart, SSE `data: "token"` lines), `/api/v1/quota`, `/api/v1/models`, `/api/v1/status` and
`/api/v1/web-search`.

Callers are portway users: login is portway's (`PORTWAY_LOGIN_MODE=email_only` is the seed's email-only
login; by default a password is asked), and the JWT (or a key a user owns) authenticates the other routes.
The seed's daily quota is the user's `daily_requests` limit (their own when set, else `daily_quota`),
enforced by admission on chat, and its 60 requests a minute per IP is a per-IP limit on every route. A tier
is a portway alias (`tiers`), so its fallback chain is the alias's. Status and search are
`rt.status.summary()` and `rt.search.search()` in the seed's shapes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, request_context
from portway.api.compat import GONE, chat_events, errors, ip_gate, json_body, json_bytes, served_headers
from portway.api.departure import EventStream
from portway.api.search import DEFAULT_LIMIT, _query
from portway.config.compat import GenzCompat
from portway.errors import InvalidApiKey, ModelNotFound, PortwayError, QuotaExceeded, ValidationError
from portway.identity.auth import Principal
from portway.identity.models import LoginRequest
from portway.limits.policy import iso
from portway.limits.spec import Limit, LimitKind, LimitSpec
from portway.providers.sse import encode_event, event_data
from portway.runtime import Runtime

ENDPOINT = "compat.genz"
QUOTA_EXCEEDED = "Daily quota exceeded"
NO_STORE = {"Cache-Control": "no-store"}
# The seed's own tiers (its /api/v1/models); another configured tier is listed by its name.
_TIERS = {
    "fast": ("Fast ⚡", "Quick responses, good for simple queries"),
    "balanced": ("Balanced ⚖️", "Balance of speed and quality"),
    "smart": ("Smart 🧠", "Best quality, slower responses"),
}


def render(err: PortwayError) -> Response:
    """The seed's error body: `{"error": message}` (and portway's code) with the status."""
    return json_bytes({"error": err.message, "code": err.code}, err.status_code)


def _tokens(events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """The chat stream as the seed sends it: one `data: "<text>"` event per piece of text."""

    async def relay() -> AsyncGenerator[bytes, None]:
        try:
            async for event in events:
                data = event_data(event)
                if not data or data == b"[DONE]":
                    continue
                chunk = orjson.loads(data)
                if "error" in chunk:  # a stream that broke mid-way says so, as an event of its own
                    error = chunk["error"]
                    yield encode_event({"error": error.get("message") if isinstance(error, dict) else error})
                    continue
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield encode_event(text)
        finally:
            await events.aclose()  # the chat relay records usage and settles limits in its clean-up

    return relay()


def build(section: GenzCompat, rt: Runtime) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["compat: genz"])

    async def user(request: Request) -> Principal:
        """A portway user (their JWT, or a key they own), with the seed's daily quota as their default."""
        await ip_gate(request, "genz", section.rpm_per_ip)
        principal = await authenticate(request)
        if principal.user_id is None:
            raise InvalidApiKey("A user's access token is required (POST /api/v1/auth/login)")
        return principal

    def quota_spec(principal: Principal) -> LimitSpec:
        own = principal.user_limits or rt.admission.per_user
        if own is None:
            return LimitSpec(daily_requests=section.daily_quota)
        if own.daily_requests is None:
            return dataclasses.replace(own, daily_requests=section.daily_quota)
        return own

    async def quota(principal: Principal) -> dict[str, Any]:
        limit = quota_spec(principal).daily_requests
        assert limit is not None
        usage = await rt.counters.usage([Limit(f"user:{principal.user_id}", LimitKind.DAILY_REQUESTS, limit)])
        used = int(usage[0].used) if usage else 0
        return {
            "used": used,
            "limit": int(limit),
            "remaining": max(int(limit) - used, 0),
            "resets_at": iso(usage[0].reset_at) if usage else None,
            "reset_time_utc": "00:00 UTC",
        }

    @router.post("/auth/login", summary="GenZ AI: exchange an email for a bearer access token (JWT)")
    @errors(render)
    async def login(request: Request) -> Response:
        await ip_gate(request, "genz", section.rpm_per_ip)
        body, _ = await json_body(request)
        try:
            credentials = LoginRequest.model_validate(body)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise ValidationError(f"{field}: {first.get('msg', 'invalid')}", param=field) from None
        return json_bytes(await rt.identity.login(credentials), 200, NO_STORE)

    @router.post("/chat", summary="GenZ AI: chat with a tier (fast, balanced, smart); SSE by default")
    @errors(render)
    async def chat_route(request: Request) -> Response:
        principal = await user(request)
        body, size = await json_body(request)
        prompt, tier = body.get("prompt"), body.get("model", "fast")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError("prompt: a non-empty string is required", param="prompt")
        if not isinstance(tier, str) or tier not in section.tiers:
            raise ValidationError(f"model: one of {', '.join(section.tiers)}", param="model")
        stream = body.get("stream", True) is not False
        payload = {
            "model": section.tiers[tier],
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        }
        limited = dataclasses.replace(principal, user_limits=quota_spec(principal))
        try:
            done = await chat_events(request, limited, payload, size, ENDPOINT)
        except QuotaExceeded as err:
            now = await quota(limited)
            answer = {"error": QUOTA_EXCEEDED, "used": now["used"], "limit": now["limit"]}
            return json_bytes(answer, 429, err.headers)
        if done is None:
            return GONE
        reply, departure = done
        headers = served_headers(reply.provider, reply.model, reply.headers)
        if reply.stream is not None:
            return EventStream(_tokens(reply.stream), headers, departure)
        completion = orjson.loads(reply.body or b"{}")
        choices = completion.get("choices") or [{}]
        answer = {
            "response": (choices[0].get("message") or {}).get("content") or "",
            "model": tier,
            "provider": reply.provider,
            "usage": completion.get("usage"),
        }
        return json_bytes(answer, 200, headers)

    @router.get("/quota", summary="GenZ AI: the caller's daily quota")
    @errors(render)
    async def quota_route(request: Request) -> Response:
        principal = await user(request)
        return json_bytes(await quota(principal), 200, NO_STORE)

    @router.get("/models", summary="GenZ AI: the tiers")
    @errors(render)
    async def models(request: Request) -> Response:
        await user(request)
        status = {p["provider"]: p["status"] for p in (await rt.status.summary())["providers"]}
        listed = []
        for tier, alias in section.tiers.items():
            name, description = _TIERS.get(tier, (tier.title(), f"The {alias} model"))
            try:
                providers = [t.provider for t in rt.router.resolve(alias)]
            except ModelNotFound:
                providers = []
            available = any(status.get(p, "up") != "down" for p in providers)
            listed.append(
                {
                    "id": tier,
                    "name": name,
                    "provider": providers[0] if providers else None,
                    "description": description,
                    "available": available,
                }
            )
        return json_bytes({"models": listed}, 200)

    @router.get("/status", summary="GenZ AI: each provider's status and uptime")
    @errors(render)
    async def status(request: Request) -> Response:
        await ip_gate(request, "genz", section.rpm_per_ip)
        if not rt.cfg.status.public:  # as GET /v1/status: public unless the operator said otherwise
            await authenticate(request)
        summary = await rt.status.summary()
        rows = [
            {
                "provider": p["provider"],
                "status": p["status"],
                "uptime": _uptime(p["uptime"]),
                "last_checked": p["last_checked"],
            }
            for p in summary["providers"]
        ]
        return json_bytes(rows, 200)

    @router.get("/web-search", summary="GenZ AI: search the web")
    @errors(render)
    async def web_search(request: Request) -> Response:
        principal = await user(request)
        query = _query(request.query_params.get("q"))
        ctx = request_context(request, principal, time.monotonic(), 0, endpoint="search")
        answer = await rt.search.search(query, min(DEFAULT_LIMIT, rt.cfg.search.max_limit), ctx)
        body = {
            "status": "success",
            "source": answer.backend,
            "query": answer.query,
            "results": [{"title": r.title, "url": r.url} for r in answer.results],
        }
        return json_bytes(body, 200, answer.headers)

    return router


def _uptime(windows: dict[str, float | None]) -> float | None:
    """The seed's one uptime percentage: the last 24 hours', else the last hour's (None: not measured yet)."""
    for window in ("24h", "1h", "7d"):
        value = windows.get(window)
        if value is not None:
            return round(float(value), 2)
    return None
