"""Seed 001, AI Pasta: `/api/models` (the catalog grouped), `/api/chat` (with `cost`, or a stream of
`data:` JSON chunks), `/api/chat-history` (sessions of chat history) and `/api/health`.

Every endpoint is first counted against the seed's `rpm_per_ip` (30 a minute per address, all endpoints),
through admission like any other limit. Chat goes through ChatService (limits, budgets, usage records and
cost as on `/v1`); the models are the catalog's (`rt.catalog.grouping`) restricted to `providers`; history
is HistoryService's: `sessionId` is a session of the caller (its owner is the caller's principal), `userId`
is kept in the session's metadata. Errors are the seed's `{"success": false, "error", "details"}`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.compat import (
    GONE,
    caller,
    chat_events,
    errors,
    ip_gate,
    json_body,
    json_bytes,
    served_headers,
)
from portway.api.departure import EventStream
from portway.config.compat import PastaCompat
from portway.errors import ModelNotFound, NotFound, PortwayError, ValidationError
from portway.identity.auth import Principal
from portway.runtime import Runtime
from portway.usage.cost import COST_HEADER, cost_header

ENDPOINT = "compat.pasta"
_TITLES = {400: "Invalid request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found"}
_TITLES |= {413: "Request too large", 429: "Too many requests"}
_OPTIONS = ("temperature", "max_tokens", "top_p")
_HISTORY_LIMIT, _SESSIONS_LIMIT, _MAX_LIMIT = 50, 20, 500


def render(err: PortwayError) -> Response:
    """`error` says what kind of failure, `details` the message; `code` is portway's, for programs."""
    status = err.status_code
    title = _TITLES.get(status, "Upstream error" if status >= 500 else "Request failed")
    body: dict[str, Any] = {"success": False, "error": title, "details": err.message, "code": err.code}
    retry = err.headers.get("Retry-After")
    if retry is not None and retry.isdigit():
        body["retryAfter"] = int(retry)  # the seed's "429 with retry information"
    return json_bytes(body, status)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValidationError("message.timestamp: an ISO 8601 date-time", param="message.timestamp")


def _limit(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise ValidationError(f"limit: a whole number from 1 to {_MAX_LIMIT}", param="limit")
    return int(raw)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ValidationError("options: an object", param="options")
    out = {}
    for name in _OPTIONS:
        value = options.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValidationError(f"options.{name}: a non-negative number", param=f"options.{name}")
        out[name] = int(value) if name == "max_tokens" else value
    return out


def build(section: PastaCompat, rt: Runtime) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["compat: pasta"])
    providers = [p for p in section.providers if p in rt.providers]

    async def who(request: Request) -> Principal:
        await ip_gate(request, "pasta", section.rpm_per_ip)
        return await caller(request, "pasta", section.auth, None)  # the gate is its per-IP limit

    def model_for(name: str) -> str:
        """The seed's ids are OpenRouter's (`anthropic/claude-3-sonnet`): a name portway routes as it is
        (an alias, a `provider/model`), else the first of `providers` that knows the model."""
        candidates = [name, *(f"{p}/{name}" for p in providers)]
        for candidate in candidates:
            try:
                rt.router.resolve(candidate)
            except ModelNotFound:
                continue
            return candidate
        return candidates[1] if len(candidates) > 1 else name

    @router.get("/models", summary="AI Pasta: every model of `providers`, grouped, with stats")
    @errors(render)
    async def models(request: Request) -> Response:
        await who(request)
        listed = [m for m in await rt.catalog.models() if m.provider in providers]
        grouped = await rt.catalog.grouping(listed)
        for name in providers:  # every configured provider has its key, listed models or not
            grouped["models"]["byProvider"].setdefault(name, [])
            grouped["stats"]["byProvider"].setdefault(name, 0)
        body = {"success": True, **grouped}
        return json_bytes(body, 200)

    @router.post("/chat", summary="AI Pasta: chat (model, messages, stream, options), with cost")
    @errors(render)
    async def chat_route(request: Request) -> Response:
        principal = await who(request)
        body, size = await json_body(request)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model.strip():
            raise ValidationError("model: a model id is required", param="model")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ValidationError("messages: a non-empty array of message objects", param="messages")
        stream = body.get("stream") is True
        payload = {"model": model_for(model), "messages": messages, "stream": stream, **_options(body)}
        done = await chat_events(request, principal, payload, size, ENDPOINT)
        if done is None:
            return GONE
        reply, departure = done
        headers = served_headers(reply.provider, reply.model, reply.headers)
        if reply.stream is not None:  # the upstream's `data:` JSON chunks, as they come
            return EventStream(reply.stream, headers, departure)
        answer = orjson.loads(reply.body or b"{}")
        answer["cost"] = _cost(rt, f"{reply.provider}/{reply.model}", answer.get("usage"), reply.cost)
        if reply.cost is not None:
            headers[COST_HEADER] = cost_header(reply.cost)
        return json_bytes(answer, 200, headers)

    @router.post("/chat-history", summary="AI Pasta: save one message of a session")
    @errors(render)
    async def save_message(request: Request) -> Response:
        principal = await who(request)
        body, _ = await json_body(request)
        user_id, session_id, message = body.get("userId"), body.get("sessionId"), body.get("message")
        if not isinstance(session_id, str) or not session_id:
            raise ValidationError("sessionId: required", param="sessionId")
        if user_id is not None and not isinstance(user_id, str):
            raise ValidationError("userId: a string", param="userId")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValidationError("message.content: a string is required", param="message.content")
        is_user = message.get("isUser", True)
        if not isinstance(is_user, bool):
            raise ValidationError("message.isUser: true or false", param="message.isUser")
        ts = _timestamp(message.get("timestamp"))
        history = rt.history
        await history.create(principal.id, session_id, metadata={"userId": user_id})
        role = "user" if is_user else "assistant"
        await history.append(principal.id, session_id, role, message["content"], ts)
        saved = {"content": message["content"], "isUser": is_user, "timestamp": message.get("timestamp")}
        if saved["timestamp"] is None:
            saved["timestamp"] = _iso(datetime.now(UTC).timestamp())
        out = {"success": True, "userId": user_id, "sessionId": session_id, "message": saved}
        return json_bytes(out, 200)

    @router.get("/chat-history", summary="AI Pasta: a session's messages, or a user's sessions")
    @errors(render)
    async def read_history(request: Request) -> Response:
        principal = await who(request)
        params = request.query_params
        if params.get("sessions") == "true":
            user_id = params.get("userId")
            if not user_id:
                raise ValidationError("userId: required with sessions=true", param="userId")
            limit = _limit(params.get("limit"), _SESSIONS_LIMIT)
            return json_bytes({"success": True, "sessions": await _sessions(principal, user_id, limit)}, 200)
        session_id = params.get("sessionId")
        if not session_id:
            raise ValidationError("sessionId: required (or userId with sessions=true)", param="sessionId")
        limit = _limit(params.get("limit"), _HISTORY_LIMIT)
        messages = await _messages(principal, session_id, limit)
        return json_bytes({"success": True, "sessionId": session_id, "messages": messages}, 200)

    async def _sessions(principal: Principal, user_id: str, limit: int) -> list[dict[str, Any]]:
        """The caller's sessions saved with this userId, most recently updated first."""
        found: list[dict[str, Any]] = []
        offset, more = 0, True
        while more and len(found) < limit:
            rows, more = await rt.history.list_sessions(principal.id, limit=100, offset=offset)
            offset += len(rows)
            for row in rows:
                if (row.metadata or {}).get("userId") == user_id and len(found) < limit:
                    found.append(_session_json(row, user_id))
        return found

    async def _messages(principal: Principal, session_id: str, limit: int) -> list[dict[str, Any]]:
        """The session's last `limit` messages, oldest first; an unknown session has none (as the seed's
        empty query), which also says nothing of another caller's sessions."""
        try:
            row, page, more = await rt.history.get(principal.id, session_id, limit=limit)
            if more:
                offset = max(row.message_count - limit, 0)
                row, page, _ = await rt.history.get(principal.id, session_id, limit=limit, offset=offset)
        except NotFound:
            return []
        return [
            {
                "content": m.message.get("content"),
                "isUser": m.role == "user",
                "role": m.role,
                "timestamp": _iso(m.created_at),
            }
            for m in page
        ]

    @router.get("/health", summary="AI Pasta: the database and the providers")
    @errors(render)
    async def health(request: Request) -> Response:
        await ip_gate(request, "pasta", section.rpm_per_ip)
        db_ok = await rt.db.ping()
        services = {"database": "connected" if db_ok else "disconnected"}
        for name in section.providers:
            services[name] = "configured" if name in rt.providers else "not configured"
        body = {"status": "ok" if db_ok else "error", "services": services}
        return json_bytes(body, 200 if db_ok else 503)

    return router


def _session_json(row: Any, user_id: str) -> dict[str, Any]:
    return {
        "sessionId": row.id,
        "userId": user_id,
        "title": row.title,
        "messageCount": row.message_count,
        "createdAt": _iso(row.created_at),
        "updatedAt": _iso(row.updated_at),
    }


def _cost(rt: Runtime, target_id: str, usage: Any, total: float | None) -> dict[str, float]:
    """The recorded cost split as the seed shows it: the prompt's price, and the rest is the answer's."""
    prompt = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    input_cost = rt.pricing.cost(target_id, int(prompt or 0), 0, int(cached or 0))
    total = input_cost if total is None else total
    input_cost = min(input_cost, total)
    return {"inputCost": input_cost, "outputCost": total - input_cost, "totalCost": total}
