"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and costs a task per request)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from portway.errors import Overloaded


class AdmissionControl:
    """Bound the requests in flight per worker; past the bound answer 503 at once instead of queueing.

    Also the door to the hot path: `fast` maps a path to a pure ASGI app that is called directly,
    skipping every framework layer (CORS, when configured, wraps this door).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        prefix: str = "/v1/",
        fast: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.prefix = prefix
        self.fast = dict(fast or {})
        self.in_flight = 0
        self._body = Overloaded("Server is at capacity; retry shortly").body()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await send(
                {
                    "type": "http.response.start",
                    "status": Overloaded.status,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
                }
            )
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        try:
            await self.fast.get(scope["path"], self.app)(scope, receive, send)
        finally:
            self.in_flight -= 1
