"""The only place that does network IO to upstreams: keep-alive connection pools per upstream origin.

A request is one write of head and body on a pooled connection (`http1.Connection`); the answer is read
whole or relayed as it arrives. Timeouts are the caller's: the attempt loop owns the deadline, so only the
connect step and, for streams, the gap between two arrivals (`read_timeout`) are bounded here.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from portway import __version__
from portway.http1 import Connection, ConnectionFailed, ProtocolError, Response, TransportError

__all__ = ["ConnectionFailed", "ProtocolError", "Response", "Transport", "TransportError", "WireRequest"]

_MAX_IDLE_PER_ORIGIN = 256
_MAX_URLS = 1024


@dataclass(slots=True)
class WireRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port: what a pooled connection is good for
    path: str
    host_header: str


def _parse(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target((parts.scheme, parts.hostname, port), path, host if default else f"{host}:{port}")


def _clean(text: str) -> str:
    # A header line must stay one line: config values and keys must not be able to inject another.
    if "\r" in text or "\n" in text:
        raise ValueError("header names and values must not contain line breaks")
    return text


class _Pool:
    """Idle connections of one origin, most recently used first (warm ones are least likely closed)."""

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self.idle: list[Connection] = []

    def get(self, now: float) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        if len(self.idle) >= _MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def discard(self, conn: Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Transport:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,  # default: the system's CAs, hostnames verified
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._ssl = ssl_context
        self._user_agent = f"portway/{__version__}"

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            if len(self._targets) >= _MAX_URLS:
                self._targets.clear()
            found = self._targets[url] = _parse(url)
        return found

    def _head(self, req: WireRequest, target: _Target) -> bytes:
        lines = [
            f"{req.method} {target.path} HTTP/1.1",
            f"Host: {target.host_header}",
            f"User-Agent: {self._user_agent}",
            f"Content-Length: {len(req.body)}",
        ]
        lines += [f"{_clean(k)}: {_clean(v)}" for k, v in req.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self, target: _Target, pool: _Pool, deadline: float | None) -> Connection:
        scheme, host, port = target.origin
        loop = asyncio.get_running_loop()
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        limit = self._connect_timeout
        if deadline is not None:
            limit = max(0.0, min(limit, deadline - loop.time()))
        try:
            async with asyncio.timeout(limit):
                transport, conn = await loop.create_connection(
                    lambda: Connection(loop, pool),
                    host,
                    port,
                    ssl=self._ssl if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            raise ConnectionFailed(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"could not connect to {host}:{port}: {type(exc).__name__}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def send(
        self, req: WireRequest, *, timeout: float | None = None, read_timeout: float | None = None
    ) -> Response:
        """Send and return once the response headers are in; the caller reads (or releases) the body.

        `timeout`: seconds for the whole answer, connecting included (lifted by `Response.clear_deadline`,
        e.g. once a stream is committed); `read_timeout`: the longest gap between two arrivals of body.
        Raises ConnectionFailed, ProtocolError, or TimeoutError. The Response must be released or closed,
        also on error paths.
        """
        target = self._target(req.url)
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = _Pool(self._keepalive)
        head = self._head(req, target)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        conn = pool.get(time.monotonic()) or await self._connect(target, pool, deadline)
        response = conn.request(head, req.body, read_timeout, deadline)
        try:
            return await response.start()
        except BaseException:
            response.close()
            raise

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
