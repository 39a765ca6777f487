"""The outermost ASGI layer: the request id, the access log line and the request's trace span, every route.

The id is the client's `x-request-id` (a short printable token) or a fresh one, set in a contextvar before
anything else runs, so every log line of the request carries it and every route answers with it (routes
that set the header themselves, the chat route among them, use the same id). With `PORTWAY_LOG_FORMAT=json`
each request ends in one access line (method, path, status, latency, request_id, provider, model); with
tracing on, the request runs inside its span. Pure ASGI: a header scan, a contextvar and one wrapped `send`.
"""

from __future__ import annotations

import logging
import time
from contextvars import Token

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portway.telemetry.logs import REQUEST_ID, new_request_id
from portway.telemetry.tracing import Tracer

access_log = logging.getLogger("portway.access")

_ID = b"x-request-id"


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, tracer: Tracer | None = None, access: bool = False) -> None:
        self.app = app
        self.tracer = tracer
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope["headers"]:
            if name == _ID:
                raw = value
                break
        rid = new_request_id(raw)
        token = REQUEST_ID.set(rid)
        if self.tracer is None and not self.access:  # the usual case: the id, nothing else
            try:
                await self.app(scope, receive, _IdSend(send, rid))
            finally:
                REQUEST_ID.reset(token)
            return
        await self._observed(scope, receive, _IdSend(send, rid), token)

    async def _observed(
        self, scope: Scope, receive: Receive, send: _IdSend, token: Token[str | None]
    ) -> None:
        started = time.monotonic()
        span = None if self.tracer is None else self.tracer.start_request(
            scope["method"], scope["path"], scope["headers"]
        )  # fmt: skip
        failed = True
        try:
            await self.app(scope, receive, send)
            failed = False
        finally:
            start = send.start
            if span is not None:
                span.end(start["status"] if start else None)
            if self.access:
                _log_access(scope, start, started, failed)
            REQUEST_ID.reset(token)


class _IdSend:
    """`send`, adding x-request-id to the response head when the route did not set it itself."""

    __slots__ = ("rid", "send", "start")

    def __init__(self, send: Send, rid: str) -> None:
        self.send = send
        self.rid = rid
        self.start: Message | None = None

    async def __call__(self, message: Message) -> None:
        if self.start is None and message["type"] == "http.response.start":
            self.start = message
            headers = message.get("headers") or []
            for name, _ in headers:
                if name == _ID:
                    break
            else:
                message["headers"] = [*headers, (_ID, self.rid.encode("latin-1"))]
        await self.send(message)


def _log_access(scope: Scope, start: Message | None, started: float, failed: bool) -> None:
    provider = model = None
    for name, value in (start or {}).get("headers", ()):
        if name == b"x-portway-provider":
            provider = value.decode("latin-1")
        elif name == b"x-portway-model":
            model = value.decode("latin-1")
    # Nothing answered: the app failed (the server answers 500), or the client left first.
    status = start["status"] if start else (500 if failed else 499)
    access_log.info(
        "%s %s %s",
        scope["method"],
        scope["path"],
        status,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "latency_ms": round((time.monotonic() - started) * 1000, 2),
            "provider": provider,
            "model": model,
        },
    )
