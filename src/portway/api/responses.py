"""OpenAI's Responses API: POST /v1/responses (+ GET / DELETE /v1/responses/{id} and its input_items).

Thin: authenticate, translate the request (protocols/responses.py), serve it with the chat service (so
aliases, fallbacks, limits, usage and cost are exactly the chat path's), translate the answer or the stream
back. A stored response (`store`, default true as on OpenAI) is written after the answer, a stream's at its
end; `previous_response_id` continues a stored conversation of the same principal. Anybody else's response
id is a 404, as if it did not exist.
"""

from __future__ import annotations

import re
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
    runtime,
)
from portway.api.departure import EventStream
from portway.api.validation import parse_json_object
from portway.errors import NotFound, UnsupportedMediaType, ValidationError
from portway.identity.auth import Principal
from portway.protocols.responses import (
    ResponsesRequest,
    chat_request,
    read_request,
    response_from_chat,
)
from portway.protocols.responses_stream import StreamTranslator
from portway.stores.sql.responses import ResponseStore, StoredResponse

router = APIRouter(tags=["responses"])

# What portway's ids look like (and OpenAI's): anything else cannot be stored, so is not looked up (a NUL
# byte, say, would be a database error on Postgres rather than the 404 it is).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@router.post("/v1/responses", summary="Create a model response (OpenAI's Responses API)")
async def create_response(request: Request) -> Response:
    started = time.monotonic()
    principal = await authenticate(request)
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise UnsupportedMediaType("This endpoint takes a JSON body (application/json), not multipart")
    raw = await request.body()
    rt = runtime(request)
    req = read_request(parse_json_object(raw), int(time.time()))
    history = None
    if req.previous_response_id is not None:
        history = await _history(rt.responses, req.previous_response_id, principal)
    chat = chat_request(req, history)
    # The prompt is estimated (limits, a missing upstream usage) from what the upstream is sent: the
    # history of a previous response included.
    size = len(orjson.dumps(chat)) if history else len(raw)
    ctx = request_context(request, principal, started, size, endpoint="responses")
    done = await chat_reply(request, chat, ctx)
    if done is None:
        return Response(status_code=499)  # the client left: the chat service recorded it
    reply, departure = done
    headers = reply_headers(reply, ctx.request_id)
    if reply.stream is None:
        response = response_from_chat(req, reply.body or b"{}", int(time.time()))
        if req.store:
            rt.responses.save_later(_stored(req, principal, response))  # in flight as the answer leaves
        return json_response(response, headers=headers)
    events = _events(rt.responses, req, principal, reply.stream)
    return EventStream(events, headers, departure)


async def _history(store: ResponseStore, response_id: str, principal: Principal) -> list[dict[str, Any]]:
    found = await store.history(response_id, principal.id) if _ID.fullmatch(response_id) else None
    if found is None:
        raise NotFound(
            f"Previous response with id '{response_id[:64]}' not found.", param="previous_response_id"
        )
    return found


async def _events(
    store: ResponseStore, req: ResponsesRequest, principal: Principal, chat: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """The chat stream as Responses events; the assembled response is stored once the stream ended
    (a client that left mid-way stores nothing)."""
    translator = StreamTranslator(req)
    try:
        async for event in chat:
            out = translator.feed(event)
            if out:
                yield b"".join(out)
        yield b"".join(translator.close(int(time.time())))
    finally:
        await chat.aclose()  # the chat relay records usage and settles limits in its own clean-up
        if translator.ended and req.store:
            store.save_later(_stored(req, principal, translator.response))


def _stored(req: ResponsesRequest, principal: Principal, response: dict[str, Any]) -> StoredResponse:
    return StoredResponse(
        id=req.id,
        principal=principal.id,
        previous_response_id=req.previous_response_id,
        created_at=float(req.created_at),
        model=str(response.get("model") or req.model),
        status=str(response.get("status")),
        response=response,
        input_items=req.input_items,
    )


async def _owned(request: Request, response_id: str) -> StoredResponse:
    principal = await authenticate(request)
    found = (
        await runtime(request).responses.get(response_id, principal.id)
        if _ID.fullmatch(response_id)
        else None
    )
    if found is None:
        raise NotFound(f"Response with id '{response_id[:64]}' not found.", param="response_id")
    return found


@router.get("/v1/responses/{response_id}", summary="Retrieve a stored model response")
async def retrieve_response(response_id: str, request: Request) -> Response:
    return json_response((await _owned(request, response_id)).response)


@router.delete("/v1/responses/{response_id}", summary="Delete a stored model response")
async def delete_response(response_id: str, request: Request) -> Response:
    principal = await authenticate(request)
    if not _ID.fullmatch(response_id) or not await runtime(request).responses.delete(
        response_id, principal.id
    ):
        raise NotFound(f"Response with id '{response_id[:64]}' not found.", param="response_id")
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get(
    "/v1/responses/{response_id}/input_items",
    summary="List a stored response's input items (after, limit, order)",
)
async def list_input_items(response_id: str, request: Request) -> Response:
    found = await _owned(request, response_id)
    q = request.query_params
    limit_text = q.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise ValidationError("limit: a whole number from 1 to 100", param="limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValidationError("order: asc or desc", param="order")
    items = found.input_items if order == "asc" else found.input_items[::-1]
    after = q.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: int(limit_text)]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > len(page),
        }
    )
