"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portway.errors import OVERLOADED, PayloadTooLarge, ValidationError, send_error


class AdmissionControl:
    """Bound the requests in flight per worker; past the bound answer 503 at once instead of queueing.

    Also the door to the hot path: `fast` maps a path to a pure ASGI app that is called directly,
    skipping every framework layer (CORS, when configured, wraps this door). Bounded: every path under
    `prefix`, and the exact `paths` (the seed surfaces' routes).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        prefix: str = "/v1/",
        fast: Mapping[str, ASGIApp] | None = None,
        paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.paths = paths
        self.max_in_flight = max_in_flight
        self.prefix = prefix
        self.fast = dict(fast or {})
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not (path.startswith(self.prefix) or path in self.paths):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await send_error(send, OVERLOADED)
            return
        self.in_flight += 1
        try:
            await self.fast.get(path, self.app)(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyLimit:
    """Cap request bodies at `limit` bytes before they are read: every route behind it, authenticated or not.

    A declared Content-Length over the limit is answered 413 at once, without reading a byte of it; a chunked
    body is counted as it arrives and answered 413 as soon as it passes the limit. The app then reads a
    disconnect, and whatever it still sends is dropped (the 413 is the answer). Requests without a body
    (neither Content-Length nor Transfer-Encoding) pass through untouched.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._too_large = PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes").render()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await send_error(send, ValidationError("Invalid Content-Length header"))
                    return
                if int(value) > self.limit:
                    await send_error(send, self._too_large)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:  # a declared length within the limit: the server delivers no more than that
            await self.app(scope, receive, send)
            return
        await _Counted(self, receive, send).run(scope)


class _Counted:
    """One chunked request under BodyLimit: counts what `receive` delivers, refuses past the limit."""

    __slots__ = ("limit", "outer", "received", "refused", "started", "upstream_receive", "upstream_send")

    def __init__(self, outer: BodyLimit, receive: Receive, send: Send) -> None:
        self.outer = outer
        self.limit = outer.limit
        self.upstream_receive = receive
        self.upstream_send = send
        self.received = 0
        self.refused = False
        self.started = False

    async def run(self, scope: Scope) -> None:
        await self.outer.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self.upstream_receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                if not self.started:
                    self.started = True
                    await send_error(self.upstream_send, self.outer._too_large)
                return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.upstream_send(message)
