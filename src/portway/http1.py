"""A minimal HTTP/1.1 client connection for upstream calls: an asyncio Protocol around httptools' parser.

Why not aiohttp's client: per request it builds a ClientRequest, a payload object, a timer handle, a
response object with its own stream reader, and re-arms a socket-read timer on every chunk, which made
the upstream call the largest single cost of a gateway request. Upstream calls here are always one POST
with a body in memory and an answer read whole or relayed chunk by chunk, so a connection is a parser,
a buffer and a waiter. Everything else (keep-alive pooling, URLs, TLS) lives in `transport`.

Body framing follows the response: Content-Length, chunked, or (no framing) until the upstream closes.
One request at a time per connection; a connection goes back to the pool only after its answer was read
to the end and the upstream allows keep-alive.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Any

import httptools

# Body bytes buffered for a reader that is behind before the socket stops being read (flow control).
_HIGH_WATER = 1 << 20
DRAIN_SECONDS = 1.0


class TransportError(Exception):
    """An upstream call failed below HTTP semantics. The message never includes request data."""


class ConnectionFailed(TransportError):
    """Could not connect, or the connection broke before the answer was complete."""


class ProtocolError(TransportError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class Headers(dict[str, str]):
    """Response headers with lower-cased names; `get` accepts any case. Repeated headers keep the last."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Response:
    """One upstream answer: status and headers, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_decoder",
        "_done",
        "_draining",
        "_error",
        "_idle",
        "_last_data",
        "_timer",
        "_waiter",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: Connection, idle_timeout: float | None, deadline: float | None = None) -> None:
        self.status = 0
        self.headers = Headers()
        self.keep_alive = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = (
            None  # zlib decompressor when the upstream compressed the body anyway
        )
        self._idle = idle_timeout
        self._deadline = deadline  # loop time by which the answer must be complete (or clear_deadline called)
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._draining = False

    # -- reading (the caller) ----------------------------------------------------------------------------

    async def start(self) -> Response:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self

    async def readany(self) -> bytes:
        """Whatever body bytes are buffered (waiting for some if none); b"" once the body is complete."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return self._flush_decoder()
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return self._decode(data)

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with this answer: the connection is reused if the answer was read to its end, else closed.

        An answer whose end is still on the way (an SSE stream's closing chunk often trails its last
        event) is left to finish for up to DRAIN_SECONDS, its bytes dropped, and then the connection is
        reused, rather than paying a new connection for the next request.
        """
        self._stop_timer()
        if self._done or self._error is not None or not self.keep_alive:
            self._conn.finished(self, reusable=self._done and self._error is None and self.keep_alive)
            return
        self._draining = True
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        self._timer = self._conn.loop.call_later(DRAIN_SECONDS, self.close)

    def close(self) -> None:
        """Abandon the answer and its connection (how an upstream learns that nobody is listening)."""
        self._stop_timer()
        self._conn.finished(self, reusable=False)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def clear_deadline(self) -> None:
        """The answer may take as long as it keeps arriving (a stream, once committed): only the idle
        timeout applies from now on."""
        self._deadline = None

    async def _wait(self) -> None:
        loop = self._conn.loop
        self._waiter = loop.create_future()
        if self._timer is None:
            if self._idle is not None and self.status:
                self._last_data = loop.time()
            due = self._due()
            if due is not None:
                self._timer = loop.call_at(due, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _due(self) -> float | None:
        """When the next timeout could fire: the deadline, or an idle gap once the headers are in."""
        due = self._deadline
        if self._idle is not None and self.status:
            idle_due = self._last_data + self._idle
            due = idle_due if due is None else min(due, idle_due)
        return due

    def _on_timer(self) -> None:
        # One timer for both limits, armed when the reader waits and re-armed from the last arrival: not a
        # timer per chunk (nor an asyncio.timeout per request, which cost a worker ~4 % of its time).
        self._timer = None
        if self._done or self._error is not None or self._chunks:
            return  # with data waiting the reader is the slow one; it re-arms when it waits
        now = self._conn.loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._fail(TimeoutError("no complete answer before the deadline"))
        else:
            due = self._due()
            if due is None:  # the deadline was cleared and there is no idle timeout: nothing to watch
                return
            if due > now:
                self._timer = self._conn.loop.call_at(due, self._on_timer)
                return
            self._fail(TimeoutError("upstream sent nothing within the idle timeout"))
        self._conn.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _decode(self, data: bytes) -> bytes:
        return data if self._decoder is None else self._decoder.decompress(data)

    def _flush_decoder(self) -> bytes:
        if self._decoder is None:
            return b""
        tail, self._decoder = self._decoder.flush(), None
        return tail

    # -- feeding (the protocol) --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_done(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        encoding = self.headers.get("content-encoding")
        if encoding in ("gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # 47: gzip or zlib header, detected
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._draining:
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER:  # not a trailing end after all: give up on this connection
                self.close()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._idle is not None:
            self._last_data = self._conn.loop.time()
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._stop_timer()
        if self._draining:
            self._conn.finished(self, reusable=self.keep_alive)
        else:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
            self._wake()


class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; `pool` gets it back when an answer was read whole."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Any) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._framed = True  # False: the body ends when the upstream closes the connection
        self._paused = False

    # -- the caller ---------------------------------------------------------------------------------------

    def request(
        self, head: bytes, body: bytes, idle_timeout: float | None, deadline: float | None = None
    ) -> Response:
        """Write one request; the Response fills in as the answer arrives."""
        assert self.transport is not None and self._response is None
        response = self._response = Response(self, idle_timeout, deadline)
        self.transport.writelines((head, body))
        return response

    def finished(self, response: Response, *, reusable: bool) -> None:
        if response is not self._response:
            return
        self._response = None
        if reusable and not self.closed:
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._response is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._response._fail(ProtocolError("upstream sent a malformed HTTP response"))
            self.close()
        except httptools.HttpParserUpgrade:
            self._response._fail(ProtocolError("upstream tried to switch protocols"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        response = self._response
        if response is None or response._done:
            return
        if response.status and not self._framed:
            response._complete()  # a body without framing ends with the connection
        else:
            response._fail(ConnectionFailed("upstream closed the connection before the answer was complete"))

    # -- httptools callbacks ------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            response.headers.clear()
            return
        headers = response.headers
        self._framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
        response._headers_done(status, self._framed and self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None and self._response.status:
            self._response._complete()
