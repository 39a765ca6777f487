"""A minimal HTTP/1.1 client connection for upstream calls: an asyncio Protocol around httptools' parser.

Why not aiohttp's client: per request it builds a ClientRequest, a payload object, a timer handle, a
response object with its own stream reader, and re-arms a socket-read timer on every chunk, which made
the upstream call the largest single cost of a gateway request. Upstream calls here are always one POST
with a body (in memory, or parts streamed from files) and an answer read whole or relayed chunk by chunk,
so a connection is a parser, a buffer and a waiter. Everything else (keep-alive pooling, URLs, TLS,
proxies) lives in `transport`.

Body framing follows the response: Content-Length, chunked, or (no framing) until the upstream closes.
One request at a time per connection; a connection goes back to the pool only after its answer was read
to the end, its request body was sent whole, and the upstream allows keep-alive. A body in memory (chat)
is written with the head in one call; a `StreamedBody` (a multipart upload) is written part by part as
the socket takes it, files read from disk in chunks, so an upload is never whole in memory.

The answer is held to the limits a hostile upstream would test (httpx/aiohttp strictness): a hard
deadline, a body cap, a head cap, no compression beyond the cap, and nothing after the answer is ever
read as part of it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools

from portway.http.errors import (
    DecodingError,
    NetworkError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
)

# Body bytes buffered for a reader that is behind before the socket stops being read (flow control).
_HIGH_WATER = 1 << 20
DRAIN_SECONDS = 1.0
MAX_HEAD_BYTES = 64 * 1024  # status line + headers (aiohttp: 8,190 per line; httpx: 100 KB in all)
MAX_HEADER_COUNT = 128
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
FILE_CHUNK = 256 * 1024  # bytes read from a file part at a time (plus the socket's write buffer: the
# memory an upload costs while it is sent, whatever its size)


@dataclass(frozen=True, slots=True)
class FilePart:
    """`size` bytes of the file at `path`, read when the body is written (each attempt reads it anew)."""

    path: Path
    size: int


class StreamedBody:
    """A request body of known length written from its parts as the socket drains: bytes as they are,
    files in FILE_CHUNK reads. `len()` is the Content-Length (the sum of the parts)."""

    __slots__ = ("length", "parts")

    def __init__(self, parts: Sequence[bytes | FilePart]) -> None:
        self.parts = tuple(parts)
        self.length = sum(len(p) if isinstance(p, bytes) else p.size for p in self.parts)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"StreamedBody({len(self.parts)} parts, {self.length} bytes)"


Body = bytes | StreamedBody


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing at once (carried out by httptools)."""


class _WriteStopped(NetworkError):
    """The connection closed while a StreamedBody was being written."""


class Headers(dict[str, str]):
    """Response headers with lower-cased names; `get` accepts any case. Repeated headers keep the last."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Response:
    """One upstream answer: status and headers, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_by_bytes",
        "_chunks",
        "_conn",
        "_deadline",
        "_decoded",
        "_decoder",
        "_done",
        "_draining",
        "_error",
        "_idle",
        "_last_data",
        "_limit",
        "_received",
        "_timer",
        "_waiter",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(
        self,
        conn: Connection,
        idle_timeout: float | None,
        deadline: float | None = None,
        limit: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.status = 0
        self.headers = Headers()
        self.keep_alive = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received = 0  # body bytes as sent (before decoding), against `_limit`
        self._decoded = 0  # body bytes after decoding, against `_limit` too (a gzip bomb stops there)
        self._limit = limit
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None  # zlib decompressor when the upstream compressed the body anyway
        self._idle = idle_timeout
        self._deadline = deadline  # loop time by which the answer must be complete (or clear_deadline called)
        self._last_data = 0.0
        self._by_bytes = True  # False: the caller marks progress itself (whole SSE events, not bytes)
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
        return data if self._decoder is None else self._decode(data)

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

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.release()
        else:  # an error or a cancel mid-answer: nobody reads the rest, so nobody may reuse the connection
            self.close()

    def clear_deadline(self) -> None:
        """The answer may take as long as it keeps arriving (a stream, once committed): only the idle
        timeout applies from now on."""
        self._deadline = None

    def idle_by_progress(self) -> None:
        """From now on the idle timeout counts from the last `progress()` call, not from the last byte:
        an upstream trickling bytes of an event that never ends is idle all the same."""
        self._by_bytes = False
        self._last_data = self._conn.loop.time()

    def progress(self) -> None:
        self._last_data = self._conn.loop.time()

    # -- timeouts: one timer per answer, re-armed by itself, never per chunk ------------------------------

    async def _wait(self) -> None:
        loop = self._conn.loop
        if self._timer is None:
            due = self._due()
            if due is not None:
                self._timer = loop.call_at(due, self._on_timer)
        self._waiter = loop.create_future()
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
        # One timer for both limits (not an asyncio.timeout per request, which cost a worker ~4 % of its
        # time). The deadline is hard: it fires whether or not bytes keep arriving or wait unread.
        self._timer = None
        if self._done or self._error is not None:
            return
        loop = self._conn.loop
        now = loop.time()
        if self._deadline is not None and now >= self._deadline:
            self._abort(ReadTimeout("no complete answer before the deadline"))
            return
        if self._idle is not None and self.status:
            if self._chunks:  # data waits for the reader: the reader is the slow one, not the upstream
                self._last_data = now
            elif now >= self._last_data + self._idle:
                self._abort(ReadTimeout("upstream sent nothing within the idle timeout"))
                return
        due = self._due()
        if due is not None:
            self._timer = loop.call_at(max(due, now), self._on_timer)

    def _rearm(self) -> None:
        """The idle gap starts to count: move the timer earlier if it is due later than that gap ends."""
        due = self._due()
        timer = self._timer
        if due is None or (timer is not None and timer.when() <= due):
            return  # (usually the deadline comes first: no new timer per answer)
        if timer is not None:
            timer.cancel()
        self._timer = self._conn.loop.call_at(due, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- decoding (bounded) ---------------------------------------------------------------------------

    def _decode(self, data: bytes) -> bytes:
        decoder = self._decoder
        room = self._limit - self._decoded
        try:
            out: bytes = decoder.decompress(data, room + 1)  # never more than the cap allows, plus one
        except zlib.error:
            raise self._abort(DecodingError("upstream sent a body that does not decode")) from None
        self._decoded += len(out)
        if len(out) > room:
            raise self._abort(DecodingError("upstream body decodes to more than the response size cap"))
        if decoder.unused_data:
            raise self._abort(DecodingError("upstream sent bytes after the end of its compressed body"))
        return out

    def _flush_decoder(self) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return b""
        if not decoder.eof and self._received:
            raise self._abort(DecodingError("upstream sent a truncated compressed body"))
        self._decoder = None
        return b""

    def _abort(self, exc: TransportError) -> TransportError:
        """Fail the answer now, drop what it buffered, close its connection; returns `exc` to raise."""
        self._fail(exc)
        self._chunks.clear()
        self._buffered = 0
        self._conn.close()
        return exc

    # -- feeding (the protocol) --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_done(self, status: int, keep_alive: bool) -> None:
        encoding = self.headers.get("content-encoding")
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):
                self._decoder = zlib.decompressobj(wbits=47)  # 47: gzip or zlib header, detected
            elif encoding not in ("", "identity"):  # we sent Accept-Encoding: identity
                raise _Stop(DecodingError("upstream used a Content-Encoding portway did not ask for"))
        self.status = status
        self.keep_alive = keep_alive
        if self._idle is not None:  # from here on idle gaps count: the timer may be due sooner now
            self._last_data = self._conn.loop.time()
            self._rearm()
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._abort(RemoteProtocolError("upstream answer is larger than the response size cap"))
            return
        if self._draining:
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER:  # not a trailing end after all: give up on this connection
                self.close()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._by_bytes and self._idle is not None:
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
            self._stop_timer()
            self._wake()


class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; `pool` gets it back when an answer was read whole."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Any) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False  # holds one of the pool's connection slots
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._framed = True  # False: the body ends when the upstream closes the connection
        self._paused = False
        self._head_bytes = 0  # raw bytes read while the head is incomplete
        self._header_bytes = 0  # parsed header names and values
        self._header_count = 0
        self._stop: TransportError | None = None
        self._writer: asyncio.Task[None] | None = None  # a StreamedBody still being written
        self._write_paused = False  # the transport's write buffer is over its high-water mark
        self._drained: asyncio.Future[None] | None = None

    # -- the caller ---------------------------------------------------------------------------------------

    def request(
        self,
        head: bytes,
        body: Body,
        idle_timeout: float | None,
        deadline: float | None = None,
        limit: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Response:
        """Write one request; the Response fills in as the answer arrives. A StreamedBody is written by
        a task of its own, so an upstream that answers before the body is in (a 413, a 401) is heard."""
        assert self.transport is not None and self._response is None
        response = self._response = Response(self, idle_timeout, deadline, limit)
        self._head_bytes = self._header_bytes = self._header_count = 0
        if isinstance(body, bytes):  # the chat path: head and body in one call, as always
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
            self._writer = self.loop.create_task(self._write_body(body, response))
        return response

    def finished(self, response: Response, *, reusable: bool) -> None:
        if response is not self._response:
            return
        self._response = None
        # A body not sent whole (the upstream answered early) leaves the upstream mid-request: not reusable.
        if reusable and not self.closed and self._writer is None:
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._stop_writer()
        self.pool.forget(self)

    # -- writing a StreamedBody ---------------------------------------------------------------------------

    async def _write_body(self, body: StreamedBody, response: Response) -> None:
        try:
            for part in body.parts:
                if isinstance(part, bytes):
                    await self._write(part)
                else:
                    await self._write_file(part)
        except _WriteStopped:
            return  # the connection went away: reading the answer reports that (or the early answer)
        except OSError:
            response._fail(TransportError("an upload could not be read from its temporary file"))
            self.close()
            return
        self._writer = None  # sent whole

    async def _write_file(self, part: FilePart) -> None:
        # Reads are synchronous: the file is a spool the API has just written (in the page cache), and a
        # FILE_CHUNK read costs microseconds, less than a hop to a thread and back.
        left = part.size
        with part.path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(FILE_CHUNK, left))
                if not chunk:
                    raise OSError("the file is shorter than its declared size")
                left -= len(chunk)
                await self._write(chunk)

    async def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _WriteStopped
        self.transport.write(data)
        while self._write_paused:  # backpressure: wait until the socket took the buffer below low water
            if self.closed:
                raise _WriteStopped
            waiter = self._drained = self.loop.create_future()
            try:
                await waiter
            finally:
                self._drained = None

    def _stop_writer(self) -> None:
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_exception(_WriteStopped())

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        response = self._response
        if response is None or response._done:
            # Bytes nobody asked for (a second, unsolicited message): never read them as part of an
            # answer; the connection cannot be trusted any more. An answer already complete stays intact.
            self.close()
            return
        in_head = not response.status
        if in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("upstream tried to switch protocols"))
            return
        except httptools.HttpParserError:
            self._fail(self._stop or RemoteProtocolError("upstream sent a malformed HTTP response"))
            return
        if in_head and not response.status and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(RemoteProtocolError("upstream response head is larger than 64 KiB"))

    def _fail(self, exc: TransportError) -> None:
        self._stop = None
        response = self._response
        if response is not None and not response._done:
            response._fail(exc)
        self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_writer()
        self.pool.forget(self)
        response = self._response
        if response is None or response._done:
            return
        if response.status and not self._framed:
            response._complete()  # a body without framing ends with the connection
        else:
            response._fail(ReadError("upstream closed the connection before the answer was complete"))

    # -- httptools callbacks ------------------------------------------------------------------------------

    def _halt(self, exc: TransportError | None) -> None:
        self._stop = exc
        raise _Stop()

    def on_message_begin(self) -> None:
        response = self._response
        if response is None or response._done:  # a second message in the same read: not ours to parse
            self._halt(None)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._header_count += 1
        self._header_bytes += len(name) + len(value)  # a head that came whole in one read counts too
        if self._header_count > MAX_HEADER_COUNT:
            self._halt(RemoteProtocolError(f"upstream sent more than {MAX_HEADER_COUNT} headers"))
        if self._header_bytes > MAX_HEAD_BYTES:
            self._halt(RemoteProtocolError("upstream response head is larger than 64 KiB"))
        self._response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            response.headers.clear()
            self._header_count = 0
            return
        headers = response.headers
        self._framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
        try:
            response._headers_done(status, self._framed and self._parser.should_keep_alive())
        except _Stop as stop:
            self._halt(stop.args[0])

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is not None and self._response.status:
            self._response._complete()
