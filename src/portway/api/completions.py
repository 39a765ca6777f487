"""POST /v1/completions: OpenAI's legacy text completions, served as chat completions.

Thin: authenticate, translate the request (protocols/completions.py), check it as chat checks its own, hand
it to the chat service, translate its answer back. So aliases, fallbacks, limits, usage and cost are chat's,
and a client that goes away during the upstream call or the stream cancels it as on the chat route.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, chat_reply, reply_headers, request_context
from portway.api.departure import EventStream
from portway.api.validation import parse_json_object, validate_chat
from portway.protocols.completions import CompletionStream, chat_request, completion_body

router = APIRouter(tags=["openai"])

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string"},
        "models": {"type": "array", "items": {"type": "string"}},
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "max_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
    },
    "additionalProperties": True,
}


@router.post(
    "/v1/completions",
    summary="Create a text completion (OpenAI's legacy completions API)",
    description="Served as a chat completion with the prompt as one user message. One prompt per request; "
    "`suffix`, `echo: true`, `logprobs` and `best_of` are refused (400 `unsupported_parameter`). "
    "`max_tokens` defaults to 16. With `stream: true` the answer is server-sent events of "
    "`text_completion` chunks ending in `data: [DONE]`.",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}
    },
)
async def completions(request: Request) -> Response:
    started = time.monotonic()
    principal = await authenticate(request)
    raw = await request.body()
    payload = validate_chat(chat_request(parse_json_object(raw)))
    ctx = request_context(request, principal, started, len(raw), endpoint="completions")
    done = await chat_reply(request, payload, ctx)
    if done is None:
        return Response(status_code=499)  # the client left: recorded by the service, nobody to answer
    reply, departure = done
    headers = reply_headers(reply, ctx.request_id)
    if reply.stream is None:
        return Response(completion_body(reply.body or b"{}"), headers=headers, media_type="application/json")
    return EventStream(_translated(reply.stream), headers, departure)


async def _translated(events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """The chat stream's events as completion chunks; closing this closes the chat stream (which records)."""
    translate = CompletionStream()
    try:
        async for event in events:
            out = translate.event(event)
            if out is not None:
                yield out
    finally:
        await events.aclose()
