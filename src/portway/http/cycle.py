"""One request and its response on portway's server protocol: the ASGI `receive` and `send` of one app call,
and the response head written with the first body chunk (one syscall)."""

from __future__ import annotations

import asyncio
import http
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portway.http.server import HttpProtocol

log = logging.getLogger("portway.http")

# Request body bytes buffered for an app that has not read them yet before the socket stops being read.
HIGH_WATER = 64 * 1024
_INVALID_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_INVALID_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}


class Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = (
        "_callbacks",
        "_chunks",
        "_delivered",
        "_expect_100",
        "_head",
        "_waiter",
        "app",
        "buffered",
        "chunked",
        "disconnected",
        "expected",
        "keep_alive",
        "more_body",
        "proto",
        "response_complete",
        "response_started",
        "scope",
        "status",
    )

    def __init__(
        self, proto: HttpProtocol, app: Any, scope: dict[str, Any], keep_alive: bool, expect_100: bool
    ) -> None:
        self.proto = proto
        self.app = app
        self.scope = scope
        self.keep_alive = keep_alive
        self.more_body = True  # the request body is still arriving
        self.buffered = 0
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.expected = 0  # response body bytes still owed under its Content-Length
        self.status = 0
        self._chunks: list[bytes] = []
        self._delivered = False  # the app has read the whole request body
        self._expect_100 = expect_100
        self._head = b""  # status line and headers, written with the first body message
        self._waiter: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[], None]] = []

    # -- fed by the protocol -----------------------------------------------------------------------------

    def feed(self, body: bytes) -> None:
        if self.response_complete:
            return
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER:
            self.proto.pause_reading()
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        """The client went away."""
        if self.response_complete:
            return
        self.disconnected = True
        self.wake()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_disconnect callback failed")

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """The `portway.on_disconnect` extension: run `callback` if the client leaves mid-response."""
        if self.disconnected:
            self.proto.loop.call_soon(callback)
        else:
            self._callbacks.append(callback)

    # -- ASGI ------------------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if self._expect_100 and not self.response_started:
            self._expect_100 = False
            self.proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (self.disconnected or self.response_complete):
            if self._chunks or not (self.more_body or self._delivered):
                return self._body_message()
            # Waiting for more body, or (body delivered) for the client to go away or the response to end.
            self.proto.resume_reading()
            self._waiter = self.proto.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return {"type": "http.disconnect"}

    def _body_message(self) -> dict[str, Any]:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.proto.resume_reading()
        self._delivered = not self.more_body
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        proto = self.proto
        if proto.write_paused and not self.disconnected:
            await proto.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {kind!r}.")
            self._head = self._response_head(message["status"], message.get("headers", ()))
            self.response_started = True
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message {kind!r} at this point of the response.")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            body, self.expected = b"", 0
        elif self.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        elif self.expected < 0:
            pass  # close-delimited (an HTTP/1.0 client): any length
        elif len(body) > self.expected:
            raise RuntimeError("Response content longer than Content-Length")
        else:
            self.expected -= len(body)
        head, self._head = self._head, b""
        if head or body:
            proto.write(head + body if head else body)
        if not more:
            if self.expected > 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            proto.response_done(self)

    def _response_head(self, status: int, headers: Any) -> bytes:
        self.status = status
        if type(headers) is not list:  # any iterable of pairs (ASGI): it is walked twice below
            headers = list(headers)
        names = [name.lower() for name, _ in headers]
        values = [value for _, value in headers]
        # One search over all names and one over all values: a bad byte anywhere is a bad byte in one.
        if _INVALID_NAME.search(b"".join(names)) or _INVALID_VALUE.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header name or value.")
        framed = close = False
        for i, name in enumerate(names):
            if name in _FRAMING:  # rare names: the loop costs one set lookup per header
                value = values[i]
                if name == b"content-length" and not framed:
                    self.expected, framed = int(value), True
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected, self.chunked, framed = 0, True, True
                elif name == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]:
                    self.keep_alive, close = False, True
        lines = [STATUS_LINE[status], self.proto.default_headers]
        lines += [b"%s: %s\r\n" % pair for pair in zip(names, values, strict=True)]
        if not self.keep_alive and not close:
            lines.append(b"connection: close\r\n")
        if not framed and self.scope["method"] != "HEAD" and status not in (204, 304):
            if self.scope["http_version"] == "1.0":
                self.expected = -1  # HTTP/1.0 knows no chunking: the body ends when the connection does
            else:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)
