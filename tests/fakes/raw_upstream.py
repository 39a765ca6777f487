"""A raw-socket lying upstream: an asyncio server on 127.0.0.1 that writes exactly the bytes a test scripts.

Unlike the fake upstream (`upstream.py`, a well-behaved OpenAI-compatible server), this one speaks no HTTP
of its own: it reads each request head and body, then hands the socket to the next scripted handler, which
may answer correctly, lie about framing, send a second message, compress a bomb, trickle a header forever,
or never stop. Handlers return whether the connection stays open for another request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawUpstream:
    """Answers each request with the next scripted handler; records request heads and connections."""

    handlers: list[Handler] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    peak_connections: int = 0
    port: int = 0
    scheme: str = "http"
    host: str = "127.0.0.1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                handler = self.handlers.pop(0)
                try:
                    keep = await handler(reader, writer)
                except (ConnectionError, OSError):
                    return  # the client hung up on a lie, as it should
                if not keep:
                    return
        except asyncio.CancelledError:
            return  # the test is over: end quietly (asyncio logs a server task that ends cancelled)
        finally:
            self.open_connections -= 1
            writer.close()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/v1/chat/completions?x=1"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/v1"


@asynccontextmanager
async def raw_upstream(
    ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RawUpstream]:
    raw = RawUpstream(scheme="https" if ssl_context else "http", host=host)
    srv = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=ssl_context)
    raw.port = srv.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        srv.close()


# -- scripted answers ----------------------------------------------------------------------------------


def answer(data: bytes, *, keep: bool = True) -> Handler:
    """Write `data` as it is."""

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return handler


def ok(body: bytes, extra: str = "", status: str = "200 OK") -> bytes:
    """A correct Content-Length answer (`extra`: more header lines, each ending in CRLF)."""
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def forever(head: bytes, piece: bytes, *, pause: float = 0.0) -> Handler:
    """Write `head`, then `piece` again and again (unpaced when `pause` is 0) until the client hangs up."""

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(head)
        while not writer.is_closing():
            writer.write(piece)
            await writer.drain()  # raises once the client is gone
            await asyncio.sleep(pause)
        return False

    return handler


def silent(seconds: float = 30.0) -> Handler:
    """Read the request and say nothing (a hung upstream)."""

    async def handler(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> bool:
        with suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1), seconds)
        return False

    return handler


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@asynccontextmanager
async def flooding_upstream(head: bytes, piece: bytes) -> AsyncIterator[str]:
    """An upstream in a thread of its own that answers one request with `head` and then `piece` as fast
    as the socket takes it, forever: bytes are always waiting, as from a real flooding peer (an upstream
    on the test's own event loop would politely take turns with the client). Yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(head)
                while not stop.is_set():
                    conn.sendall(piece)
            except OSError:
                return  # the client hung up

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        listener.close()
        await asyncio.to_thread(thread.join, 5)  # the loop must run meanwhile: it closes our socket
