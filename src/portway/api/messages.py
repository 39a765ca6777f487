"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, on every model.

Thin: authenticate (`x-api-key` or `Authorization: Bearer`, as every route), translate the request
(protocols/messages.py), check it as chat checks its own, hand it to the chat service, translate its answer
back. So aliases, fallbacks, limits, usage and cost are chat's, and a client that goes away during the
upstream call or the stream cancels it as on the chat route. The `anthropic-version` and `anthropic-beta`
headers are accepted and not needed. Errors on these routes have Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`) with portway's status codes; the refusals in front of
every route (the body cap, the in-flight cap) keep OpenAI's.

count_tokens is an estimate, the one admission reserves: the request body's bytes / 4 (+1). It calls no
upstream and writes no request-log row; an unknown model is still a 404 and a model the key may not use a
403, as a real request would be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import (
    authenticate,
    chat_reply,
    json_response,
    reply_headers,
    request_context,
    request_id,
    runtime,
)
from portway.api.departure import EventStream
from portway.api.validation import parse_json_object, validate_chat
from portway.errors import PortwayError
from portway.protocols import messages as protocol
from portway.services.chat import RequestContext
from portway.usage.cost import prompt_tokens_estimate

log = logging.getLogger("portway.api")
router = APIRouter(tags=["anthropic"])

_MESSAGE_PARAM = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}
_BASE_PROPERTIES: dict[str, Any] = {
    "model": {"type": "string"},
    "models": {"type": "array", "items": {"type": "string"}},
    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE_PARAM},
    "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    "tools": {"type": "array", "items": {"type": "object"}},
    "tool_choice": {"type": "object"},
}


def _body(required: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": required,
        "properties": {**_BASE_PROPERTIES, **extra},
        "additionalProperties": True,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_CREATE_BODY = _body(
    ["model", "max_tokens", "messages"],
    {
        "max_tokens": {"type": "integer", "minimum": 1},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer"},
        "stream": {"type": "boolean"},
    },
)
_COUNT_BODY = _body(["model", "messages"], {})


@router.post(
    "/v1/messages",
    summary="Create a message (Anthropic's Messages API, on any model)",
    description="Anthropic's Messages API, translated to chat completions for any target of `model` "
    "(an alias or `provider/model`). With `stream: true` the answer is Anthropic's event stream "
    "(`message_start`, `content_block_*`, `message_delta`, `message_stop`). Errors have Anthropic's shape.",
    openapi_extra=_CREATE_BODY,
)
async def create_message(request: Request) -> Response:
    started = time.monotonic()
    rid = request_id(request)
    try:
        principal = await authenticate(request)
        raw = await request.body()
        body = parse_json_object(raw)
        payload = validate_chat(protocol.chat_request(body))
        ctx = request_context(request, principal, started, len(raw), endpoint="messages", rid=rid)
        return await _serve(request, body, payload, ctx)
    except PortwayError as err:
        return _error(err, rid)
    except Exception:
        log.exception("unhandled error in /v1/messages")
        return _error(PortwayError("Internal server error"), rid)


@router.post(
    "/v1/messages/count_tokens",
    summary="Count a message's input tokens (an estimate: body bytes / 4)",
    description="Anthropic's token counting endpoint. portway answers the estimate its admission control "
    "reserves (the body's bytes / 4, plus one) without calling an upstream.",
    openapi_extra=_COUNT_BODY,
)
async def count_tokens(request: Request) -> Response:
    rid = request_id(request)
    try:
        principal = await authenticate(request)
        raw = await request.body()
        payload = protocol.chat_request(parse_json_object(raw), count_only=True)
        rt = runtime(request)
        rt.admission.check_models(principal, [payload["model"]])
        rt.router.plan(payload["model"])  # an unknown model: 404, as the request itself would get
        return json_response({"input_tokens": prompt_tokens_estimate(len(raw))})
    except PortwayError as err:
        return _error(err, rid)


def _error(err: PortwayError, request_id: str) -> Response:
    body = orjson.dumps(protocol.error_body(err.status_code, err.message, request_id))
    headers = {**err.headers, "request-id": request_id, "x-request-id": request_id}
    return Response(body, status_code=err.status_code, headers=headers, media_type="application/json")


async def _serve(
    request: Request, body: dict[str, Any], payload: dict[str, Any], ctx: RequestContext
) -> Response:
    """Run the chat request, cancelled if the client leaves meanwhile (the service records that as 499).

    A target whose provider speaks the Messages API itself (`speaks_messages`: Anthropic) gets the client's
    body untranslated, and its answer goes back as it came."""
    done = await chat_reply(request, payload, ctx, messages=body)
    if done is None:
        return Response(status_code=499)  # the client left: recorded by the service, nobody to answer
    reply, departure = done
    headers = reply_headers(reply, ctx.request_id)
    headers["request-id"] = ctx.request_id  # Anthropic's name for it (the SDK shows it as `_request_id`)
    passthrough = reply.native  # a cache hit never is: the cache holds chat completions
    stop = payload.get("stop") or ()
    if reply.stream is None:
        if passthrough:
            return Response(reply.body or b"", headers=headers, media_type="application/json")
        completion = orjson.loads(reply.body or b"{}")
        answer = protocol.message(
            completion, model=payload["model"], fallback_id=ctx.request_id, stop_sequences=stop
        )
        return json_response(answer, headers=headers)
    if passthrough:
        return EventStream(_passed(reply.stream), headers, departure)
    translate = protocol.MessagesStream(payload["model"], fallback_id=ctx.request_id, stop_sequences=stop)
    return EventStream(_translated(reply.stream, translate), headers, departure)


async def _translated(
    events: AsyncGenerator[bytes, None], translate: protocol.MessagesStream
) -> AsyncGenerator[bytes, None]:
    """The chat stream as Anthropic's events; closing this closes the chat stream (which records)."""
    try:
        async for event in events:
            for out in translate.feed(event):
                yield out
        for out in translate.close():
            yield out
    finally:
        await events.aclose()


async def _passed(events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """An Anthropic upstream's events as they came (portway's mid-stream error event in Anthropic's shape)."""
    try:
        async for event in events:
            yield protocol.passthrough_event(event)
    finally:
        await events.aclose()
