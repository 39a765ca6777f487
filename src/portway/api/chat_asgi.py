"""POST /v1/chat/completions as a pure ASGI app: the hot path.

Every gateway request passes here, so it skips what a framework route costs per request (routing, dependency
solving, exception middleware, Request/Response objects) and speaks ASGI directly. The route is still
listed in the OpenAPI document (see api/openai.py) and behaves exactly as the rest of the API: errors are
PortwayErrors rendered as OpenAI error JSON, unexpected ones are logged and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import Receive, Scope, Send

from portway.api.common import ClientAddress
from portway.api.departure import SSE_HEADERS, Departure, stream_events
from portway.api.validation import parse_json_object, validate_chat
from portway.errors import MethodNotAllowed, PayloadTooLarge, PortwayError, ValidationError, send_error
from portway.identity.auth import bearer_token
from portway.runtime import Runtime
from portway.services.cache import request_mode
from portway.services.chat import ChatReply, RequestContext
from portway.services.history import named_session
from portway.telemetry.logs import REQUEST_ID, new_request_id
from portway.usage.cost import cost_header

log = logging.getLogger("portway.api")

_JSON = (b"content-type", b"application/json")


def _header_map(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The body, refusing early (413) when it is larger than `limit`, declared or not."""
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError  # nobody is left to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ChatCompletionsApp:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.limit = runtime.cfg.server.max_body_bytes
        trusted = runtime.cfg.server.trusted_proxies
        self.client_address = ClientAddress(trusted) if trusted else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await send_error(
                send, MethodNotAllowed("Method not allowed for this path", headers={"Allow": "POST"})
            )
            return
        departure = Departure()
        try:
            reply, headers = await self._handle(scope, receive, departure)
        except PortwayError as err:
            departure.disarm()
            await send_error(send, err)
            return
        except asyncio.CancelledError:
            if departure.forgive():
                return  # the client left: the service recorded it, and nobody is left to answer
            raise
        except Exception:
            departure.disarm()
            log.exception("unhandled error in chat completions")
            await send_error(send, PortwayError("Internal server error"))
            return
        if reply.stream is None:
            departure.disarm()
            body = reply.body or b""
            # A length rather than chunked encoding: fewer bytes, and a client parses it with less work.
            headers += [_JSON, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:
            await stream_events(reply.stream, send, [*SSE_HEADERS, *headers], departure)

    async def _handle(
        self, scope: Scope, receive: Receive, departure: Departure
    ) -> tuple[ChatReply, list[tuple[bytes, bytes]]]:
        started = time.monotonic()
        h = _header_map(scope)
        auth, api_key = h.get(b"authorization"), h.get(b"x-api-key")
        principal = await self.rt.auth.authenticate(
            bearer_token(
                auth.decode("latin-1") if auth else None, api_key.decode("latin-1") if api_key else None
            )
        )
        raw = await _read_body(receive, h.get(b"content-length"), self.limit)
        body = validate_chat(parse_json_object(raw))
        # The id api/access.RequestTelemetry set for this request (the same rule when run without it).
        request_id = REQUEST_ID.get() or new_request_id(h.get(b"x-request-id"))
        client = scope.get("client")
        ip = client[0] if client else None
        if self.client_address is not None:  # server.trusted_proxies: no work per request without it
            ip = self.client_address.resolve(ip, scope["headers"])
        ctx = RequestContext(request_id, principal, started, ip, len(raw))
        mode = h.get(b"x-portway-cache")  # the response cache: force | skip
        if mode is not None:
            ctx.cache_mode = request_mode(mode.decode("latin-1"))
        session = h.get(b"x-portway-session")
        if session is not None or "metadata" in body:  # chat history: one lookup when no session is named
            ctx.session, ctx.prepend = named_session(body, session, h.get(b"x-portway-history"))
        departure.arm(scope, receive)  # the body is read: from here `receive` only reports a disconnect
        reply = await self.rt.chat.chat(body, ctx)
        headers = [
            (b"x-portway-provider", reply.provider.encode()),
            (b"x-portway-model", reply.model.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in (reply.headers or {}).items()]
        if reply.cache is not None:
            headers.append((b"x-portway-cache", reply.cache.encode()))
        if reply.cost is not None:  # non-stream only: a stream's cost is in its usage record
            headers.append((b"x-portway-cost-usd", cost_header(reply.cost).encode()))
        return reply, headers


# The route's entry in the OpenAPI document (it is not a framework route, so it is described by hand).
OPENAPI_PATH: dict[str, Any] = {
    "post": {
        "tags": ["openai"],
        "summary": "Create a chat completion (OpenAI-compatible)",
        "description": "OpenAI's chat completions API. `model` is an alias or `provider/model`; an optional "
        "`models` list adds fallbacks. Every other OpenAI parameter is passed through. With `stream: true` "
        "the answer is server-sent events ending in `data: [DONE]`. The headers `x-portway-provider` and "
        "`x-portway-model` name the target that served. A header `x-portway-session` (or "
        "`metadata.session_id`) keeps the turn in that chat session (see /v1/sessions); "
        "`x-portway-history: prepend` sends its stored messages first.",
        "operationId": "create_chat_completion",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["model", "messages"],
                        "properties": {
                            "model": {"type": "string"},
                            "models": {"type": "array", "items": {"type": "string"}},
                            "messages": {"type": "array", "items": {"type": "object"}},
                            "stream": {"type": "boolean"},
                        },
                        "additionalProperties": True,
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "A chat.completion object, or an SSE stream of chat.completion.chunk"},
            "default": {"description": 'Error: {"error": {"message", "type", "code", "param"}}'},
        },
    }
}
