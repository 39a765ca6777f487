"""portway's HTTP/1.1 server protocol: an asyncio Protocol around httptools' request parser, speaking ASGI.

uvicorn runs it (`uvicorn.run(..., http=HttpProtocol)`) and keeps everything around it: the listening
sockets, worker processes, the lifespan, signals and graceful shutdown. This class is what happens per
connection and per request. uvicorn's own httptools protocol builds a cycle object with an asyncio.Event per
request, arms and cancels a keep-alive timer per request, runs two regular expressions over every response
header, and writes the status line and headers in one syscall and the body in another; on this machine that
was about 40 us of the ~190 us a gateway request cost a worker, and a minimal protocol does it in ~20 us.

Where ASGI leaves a choice open this behaves as uvicorn does, except:

* the status line and headers go out with the first body message, in one write (ASGI allows a server to
  hold `http.response.start` back until the body starts);
* one timer per connection, re-armed lazily, instead of one armed and cancelled per request. It closes
  a connection idle for `timeout_keep_alive`, a request head not whole `read_timeout` after its first
  byte, a body with no byte for `read_timeout` (and the rest of a body after an early answer, read and
  dropped, after `read_timeout` in all); it does not run while the app works or portway stopped reading;
* request heads are capped (`ServerLimits`: 431 and close); `limit_concurrency` works as in uvicorn's
  httptools protocol (past it: 503 and close);
* protocol-level errors (unparseable requests, an app that fails before answering) are OpenAI-style JSON;
* the ASGI extension `portway.on_disconnect`: `scope["extensions"]["portway.on_disconnect"](callback)`
  runs `callback()` once if the client goes away while the response is still open. portway's streams use
  it to cancel their upstream call, instead of a task per stream that waits on `receive()`.

Websocket upgrades are not supported: such a request is answered as plain HTTP, then the connection closed.
Bytes after a request with `Connection: close` are ignored (as uvicorn does), not answered with a 400.
`portway serve` passes `protocol_factory(cfg.server)` as `http=`: a partial, so it pickles into workers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httptools
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from portway.errors import OVERLOADED, BadHttpRequest, HeadersTooLarge, PortwayError, send_error
from portway.http.cycle import STATUS_LINE, Cycle

if TYPE_CHECKING:
    from portway.config import ServerConfig

log = logging.getLogger("portway.http")
access = logging.getLogger("uvicorn.access")

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}


def _error_response(err: PortwayError) -> bytes:
    """A whole response to write before closing the connection (no app is there to answer)."""
    status, headers, body = err.render()
    head = b"".join(b"%s: %s\r\n" % header for header in headers)
    return STATUS_LINE[status] + head + b"connection: close\r\n\r\n" + body


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the protocol enforces beyond uvicorn's Config (defaults: those of `server:` in the config)."""

    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    read_timeout: float = 10.0


def protocol_factory(server: ServerConfig) -> functools.partial[HttpProtocol]:
    """`uvicorn.run(http=...)`: this protocol with the server limits of the config."""
    limits = ServerLimits(server.max_header_bytes, server.max_header_count, server.read_timeout)
    return functools.partial(HttpProtocol, limits=limits)


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing and answer `response`, then close."""

    def __init__(self, response: bytes) -> None:
        self.response = response


_rendered: tuple[object, bytes] = (None, b"")
_BAD_REQUEST = _error_response(BadHttpRequest("Invalid HTTP request"))
_SERVER_ERROR = _error_response(PortwayError("Internal server error"))
_HEADERS_TOO_LARGE = _error_response(HeadersTooLarge("Request header fields too large"))


async def _refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app a request gets past `limit_concurrency`: a 503 at once, then the connection is closed (its
    cycle is not kept alive, so the response says `connection: close`)."""
    await send_error(send, OVERLOADED)


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are answered one at a time; pipelined ones wait their turn."""

    def __init__(
        self,
        config: Any,  # uvicorn.Config
        server_state: Any,  # uvicorn.server.ServerState
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.root_path: str = config.root_path
        self.keepalive_timeout: float = config.timeout_keep_alive
        self.limit_concurrency: int | None = config.limit_concurrency
        self.read_timeout = limits.read_timeout
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.access_log = access.hasHandlers() and bool(config.access_log)
        self.server_state = server_state
        self.app_state = app_state
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn: a client may send more after `Connection: close`; it is ignored, not a 400.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.cycle: Cycle | None = None  # the request being answered
        self.reading: Cycle | None = None  # the request being received (often the same)
        self.pipeline: deque[Cycle] = deque()  # received requests waiting for their turn
        self.write_paused = False
        self._read_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_since = 0.0
        self._last_read = 0.0  # when bytes last arrived
        self._drain_until = 0.0  # the rest of a body after an early answer is read and dropped until then
        self._in_head = False  # a request head has begun and is not complete
        self._head_start = 0.0
        self._fed = 0  # bytes received on this connection; with the next two, bounds a head's size
        self._fed_before = 0  # ... before the current read
        self._head_from = 0  # _fed_before and _fed when the head began
        self._head_after = 0
        self._upgrade = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_100 = False

    @property
    def default_headers(self) -> bytes:
        """uvicorn's own headers (Date, --header ones), rendered once per new list: uvicorn replaces the
        list when the Date changes, once a second."""
        global _rendered
        source = self.server_state.default_headers
        if _rendered[0] is not source:
            _rendered = (source, b"".join(b"%s: %s\r\n" % (name, value) for name, value in source))
        return _rendered[1]

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self.transport = transport
        self.server_state.connections.add(self)
        self.client = get_remote_addr(transport)
        self.server = get_local_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.cycle is not None:
            self.cycle.lost()
        self.pipeline.clear()
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        self._fed_before = self._fed
        self._fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade = True  # answered as plain HTTP; what follows is not HTTP, so close after it
            for cycle in (self.cycle, *self.pipeline):
                if cycle is not None:
                    cycle.keep_alive = False
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._fail(refusal.response)
            else:
                log.debug("invalid HTTP request from %s", self.client)
                self._fail(_BAD_REQUEST)
            return
        # A head still incomplete after whole reads past the cap: refuse it before it grows any further
        # (the parser buffers a header line until it ends; the check at its end would come too late).
        if self._in_head and self._fed - self._head_after > self.max_header_bytes:
            self._fail(_HEADERS_TOO_LARGE)

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed client has nothing more to send us

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_100 = False
        self._in_head = True
        self._head_start = start = self._last_read
        self._head_from = self._fed_before
        self._head_after = self._fed
        if self._timer is None or start + self.read_timeout < self._timer_at:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        self._headers.append((name, value))

    def _head_size(self) -> int:
        return len(self._url) + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The reads this head came in bound its size: it is counted only when they are larger than the cap.
        if len(self._headers) > self.max_header_count or (
            self._fed - self._head_from > self.max_header_bytes and self._head_size() > self.max_header_bytes
        ):
            raise _Refusal(_HEADERS_TOO_LARGE)
        parser = self.parser
        raw_method = parser.get_method()
        version = parser.get_http_version()
        url = httptools.parse_url(self._url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": self.asgi,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": _METHODS.get(raw_method) or raw_method.decode("ascii"),
            "root_path": self.root_path,
            "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": url.query or b"",
            "headers": self._headers,
            "state": self.app_state.copy(),
        }
        keep_alive = version != "1.0" and parser.should_keep_alive() and not self._upgrade
        app = self.app
        limit = self.limit_concurrency
        state = self.server_state
        if limit is not None and (len(state.connections) >= limit or len(state.tasks) >= limit):
            app, keep_alive = _refuse, False  # as uvicorn's httptools protocol: 503 and close
        cycle = Cycle(self, app, scope, keep_alive, self._expect_100)
        scope["extensions"] = {"portway.on_disconnect": cycle.on_disconnect}
        self.reading = cycle
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self.pause_reading()  # one request answered at a time: let TCP hold the rest

    def on_body(self, body: bytes) -> None:
        if self.reading is not None:
            self.reading.feed(body)

    def on_message_complete(self) -> None:
        cycle = self.reading
        if cycle is not None:
            self.reading = None
            cycle.more_body = False
            cycle.wake()
            if self.cycle is None:  # the rest of an early-answered body is in: idle from now
                self._go_idle()

    # -- requests and responses ----------------------------------------------------------------------------

    def _start(self, cycle: Cycle) -> None:
        self.cycle = cycle
        task = self.loop.create_task(self._run(cycle))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, cycle: Cycle) -> None:
        try:
            result = await cycle.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:  # as uvicorn: the connection, not the worker, pays for an app's failure
            if not cycle.disconnected:
                log.error("Exception in ASGI application", exc_info=exc)
            if not cycle.response_started and not cycle.disconnected:
                self.write(_SERVER_ERROR)
            self.close()
        else:
            if result is not None:  # as uvicorn: an app that returns a value is broken; so is its connection
                log.error("ASGI callable should return None, but returned %r", result)
                self.close()
            elif not cycle.response_complete and not cycle.disconnected:
                log.error("ASGI app returned without completing its response")
                if not cycle.response_started:
                    self.write(_SERVER_ERROR)
                self.close()
        finally:
            if self.access_log:
                self._log_access(cycle)

    def response_done(self, cycle: Cycle) -> None:
        self.server_state.total_requests += 1
        if cycle is not self.cycle:
            return
        self.cycle = None
        # A response may end before its request was received whole (a 401 or 413 before the body was read):
        # the rest of that body is read and dropped, so that the client gets to read the answer.
        if not cycle.keep_alive or self.transport is None or self.transport.is_closing():
            self.close()
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
        else:
            self.resume_reading()
            self._go_idle()
            if self.reading is cycle:  # read and drop the rest of the body, for read_timeout at most
                self._drain_until = self._idle_since + self.read_timeout
                self._arm()

    def _log_access(self, cycle: Cycle) -> None:
        scope = cycle.scope
        client = "{}:{}".format(*scope["client"]) if scope.get("client") else "-"
        path = scope["path"] + (f"?{scope['query_string'].decode('ascii')}" if scope["query_string"] else "")
        access.info(
            '%s - "%s %s HTTP/%s" %d', client, scope["method"], path, scope["http_version"], cycle.status
        )

    # -- connection plumbing ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _fail(self, response: bytes) -> None:
        """The client sent what cannot be served: answer `response` unless an answer has begun, and close."""
        if self.cycle is None or not self.cycle.response_started:
            self.write(response)
        self.close()

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()
            # The time spent paused was portway's, not the client's: its read clocks start again.
            now = self._last_read = self.loop.time()
            if self._in_head:
                self._head_start = now
            self._arm()

    async def drain(self) -> None:
        if self.write_paused:
            if self._drain is None or self._drain.done():
                self._drain = self.loop.create_future()
            await self._drain

    # -- the connection's one timer ----------------------------------------------------------------------

    def _go_idle(self) -> None:
        self._idle_since = now = self.loop.time()
        if self._timer is None or now + self.keepalive_timeout < self._timer_at:
            self._arm()

    def _deadline(self) -> float | None:
        """When the connection is closed if nothing changes; None while the wait is not the client's."""
        if self._read_paused:
            return None  # portway stopped reading
        if self._in_head:
            return self._head_start + self.read_timeout
        reading = self.reading
        if reading is not None:
            due = self._last_read + self.read_timeout
            return due if self.cycle is not None else min(due, self._drain_until)
        if self.cycle is None:
            return self._idle_since + self.keepalive_timeout
        return None  # the app is working on a request it has whole

    def _arm(self) -> None:
        # One timer per connection: moved only when a deadline comes earlier than the armed one, else it
        # re-arms itself when it fires (with the defaults, read_timeout > keep-alive: never moved).
        due = self._deadline()
        if due is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= due:
                return
            timer.cancel()
        self._timer_at = due
        self._timer = self.loop.call_at(due, self._due)

    def _due(self) -> None:
        self._timer = None
        due = self._deadline()
        if due is None:
            return
        if due > self.loop.time():
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._due)
            return
        cycle = self.cycle
        if cycle is None or cycle is self.reading:
            self.close()  # idle too long, or a head or body stalled: the app (if any) sees a disconnect
            return
        # The stall is in a request behind the one being answered: finish that answer, then close.
        cycle.keep_alive = False
        self.pipeline.clear()
        self.reading = None
        self._in_head = False
        self.pause_reading()

    def shutdown(self) -> None:
        """uvicorn calls this on every connection at shutdown: close now if idle, else after the response."""
        if self.cycle is None:
            self.close()
        else:
            self.cycle.keep_alive = False
            for waiting in self.pipeline:
                waiting.keep_alive = False
