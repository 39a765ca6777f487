"""Seed 004, AI API Server: `POST /chat` and `POST /local-chat` with `x-api-key` and `{"prompt"}`, answered
in OpenAI's `choices` format, and `GET /current-key` (header `admin-secret`) -> `{api_key, expiry}`.

The weekly key is a rotating key policy (identity/rotation.py, the README's "Rotating keys") named
`compat-keyserver`, period `rotation_days`, no grace: the rotation timer replaces it on schedule and the
previous key gets 401 at once. Only that policy's current key is accepted on these routes. The policy is
created the first time an admin asks for the key. `admin_secret` is compared in constant time, and the
admin route is limited per IP so the secret cannot be guessed at speed.
"""

from __future__ import annotations

import contextlib
import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, client_ip
from portway.api.compat import GONE, anonymous, chat, errors, json_body, json_bytes, served_headers
from portway.config.compat import KeyserverCompat
from portway.errors import InvalidApiKey, NotFound, PortwayError, ValidationError
from portway.identity.auth import Principal
from portway.identity.models import PolicyCreate
from portway.limits.spec import LimitSpec
from portway.runtime import Runtime

POLICY = "compat-keyserver"
ADMIN_RPM = 60  # GET /current-key requests per minute and client address (guessing the secret)
_REFRESH = 1.0  # seconds: how often a key that is not the cached current one re-reads the policy


def render(err: PortwayError) -> Response:
    """The seed is FastAPI: `{"detail": "..."}` with the status."""
    return json_bytes({"detail": err.message}, err.status_code)


class _CurrentKey:
    """Which key id is the policy's current one. A key id not seen before re-reads the policy at once (the
    key rotated a moment ago); one already refused re-reads at most every _REFRESH seconds."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.key_id: str | None = None
        self.read_at = float("-inf")
        self.refused: set[str] = set()  # other valid keys shown since the last read

    async def check(self, principal: Principal) -> None:
        key_id = principal.key_id
        if key_id is None:
            raise InvalidApiKey("Invalid or expired API key")
        if key_id != self.key_id and (
            key_id not in self.refused or time.monotonic() - self.read_at >= _REFRESH
        ):
            self.read_at = time.monotonic()
            self.refused.clear()
            try:
                self.key_id = (await self.rt.identity.rotation.get(POLICY)).current_key_id
            except NotFound:
                self.key_id = None
        if key_id != self.key_id:
            if len(self.refused) < 4096:
                self.refused.add(key_id)
            raise InvalidApiKey("Invalid or expired API key")


def build(section: KeyserverCompat, rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["compat: keyserver"])
    assert section.admin_secret is not None  # the config refuses an enabled keyserver without one
    secret = section.admin_secret.get_secret_value().encode()
    current = _CurrentKey(rt)
    admin_limit = LimitSpec(rpm=ADMIN_RPM)

    async def ensure_policy() -> None:
        rotation = rt.identity.rotation
        try:
            await rotation.get(POLICY)
        except NotFound:
            body = PolicyCreate(name=POLICY, period_days=section.rotation_days, grace_seconds=0)
            with contextlib.suppress(ValidationError):  # another worker created it first
                await rotation.create_policy(body)

    @router.get("/current-key", summary="AI API Server: the current weekly key (header admin-secret)")
    @errors(render)
    async def current_key(request: Request) -> Response:
        ip = client_ip(request)
        # Counted like any request (the same limiter), then released: only the request counts are kept.
        ticket = await rt.admission.reserve(
            anonymous("keyserver-admin", ip, admin_limit), ip, tokens=0, cost=0.0
        )
        await rt.admission.settle(ticket, None, 0.0)
        given = request.headers.get("admin-secret", "").encode()
        if not hmac.compare_digest(given, secret):
            raise InvalidApiKey("Invalid admin secret")
        await ensure_policy()
        key = await rt.identity.rotation.current(POLICY)
        body = {"api_key": key["api_key"], "expiry": key["expires_at"]}
        return json_bytes(body, 200, {"Cache-Control": "no-store"})

    async def prompt_chat(request: Request, model: str) -> Response:
        principal = await authenticate(request)
        await current.check(principal)
        body, size = await json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError("prompt: a non-empty string is required", param="prompt")
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        reply = await chat(request, principal, payload, size, "compat.keyserver")
        if reply is None:
            return GONE
        headers = served_headers(reply.provider, reply.model, reply.headers)
        return Response(reply.body or b"{}", headers=headers, media_type="application/json")

    @router.post("/chat", summary="AI API Server: chat with the hosted model (x-api-key)")
    @errors(render)
    async def chat_route(request: Request) -> Response:
        return await prompt_chat(request, section.chat_model)

    @router.post("/local-chat", summary="AI API Server: chat with the local model (x-api-key)")
    @errors(render)
    async def local_chat(request: Request) -> Response:
        return await prompt_chat(request, section.local_model)

    return router
