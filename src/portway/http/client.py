"""The only place that does network IO to upstreams: keep-alive connection pools per upstream origin.

A request is one write of head and body on a pooled connection (`connection.Connection`); the answer is read
whole or relayed as it arrives. Timeouts are the caller's: the attempt loop owns the deadline, so only the
connect step, the wait for a free connection and, for streams, the gap between two arrivals
(`read_timeout`) are bounded here.

Operators' needs: a cap on connections per origin with a bounded wait (PoolTimeout past it), a connect
timeout, TLS options per provider (`TLSOptions`: one SSLContext per distinct set, made once), and the
HTTPS_PROXY / HTTP_PROXY / NO_PROXY environment variables (https through a CONNECT tunnel, http as
absolute-form requests to the proxy). Every failure is one of the TransportError subclasses of `http.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from portway import __version__
from portway.http.connection import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_HEAD_BYTES,
    Body,
    Connection,
    FilePart,
    Response,
    StreamedBody,
)
from portway.http.errors import (
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    PoolTimeout,
    RemoteProtocolError,
)
from portway.telemetry.context import UPSTREAM_HEADERS

__all__ = ["Body", "FilePart", "StreamedBody", "TLSOptions", "Transport", "WireRequest"]

_MAX_URLS = 1024


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """A provider's TLS settings; None on a request means the default (system CAs, host names checked)."""

    verify: bool = True
    ca_file: str | None = None


@dataclass(slots=True)
class WireRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: Body  # bytes, or a StreamedBody of known length (Content-Length is its len() either way)
    tls: TLSOptions | None = None


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    auth: str | None  # the Proxy-Authorization value; never logged, never in an error

    @property
    def where(self) -> str:
        return f"proxy {self.host}:{self.port}"  # what errors may say about it (no credentials)


@dataclass(slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port
    prefix: str  # the request line after the method, and the fixed headers
    authority: str  # host:port for CONNECT
    ssl: ssl.SSLContext | None
    proxy: _Proxy | None
    pool: _Pool


def _parse_proxy(value: str) -> _Proxy:
    if "://" not in value:
        value = "http://" + value  # like curl: a bare host:port is an http proxy
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:  # never echo the value: it may hold a password
        raise ValueError(f"only http:// proxies are supported (got a {parts.scheme}:// proxy URL)")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, auth)


def _bypass(host: str, port: int, no_proxy: str | None) -> bool:
    """NO_PROXY as urllib's proxy_bypass_environment reads it (*, host, domain and .suffix, host:port),
    plus IP networks in CIDR form as httpx and curl accept them."""
    if not no_proxy:
        return False
    stdlib_bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if stdlib_bypass(f"{host}:{port}", {"no": no_proxy}):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        try:
            if ip in ipaddress.ip_network(entry.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def _clean(text: str) -> str:
    # A header line must stay one line: config values and keys must not be able to inject another.
    # (Config headers are validated at load; this is the guard for whatever else reaches the wire.)
    if "\r" in text or "\n" in text or "\0" in text:
        raise LocalProtocolError("header names and values must not contain line breaks")
    return text


class _Pool:
    """The connections of one origin: idle ones most recently used first (warm ones are least likely
    closed), and a count of all open ones against `max_connections`, with waiters for a free slot."""

    def __init__(self, keepalive: float, max_connections: int) -> None:
        self.keepalive = keepalive
        self.max = max_connections
        self.open = 0
        self.idle: list[Connection] = []
        self.waiters: deque[asyncio.Future[None]] = deque()

    def get(self, now: float) -> Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake_one()

    def forget(self, conn: Connection) -> None:
        """A connection closed: it leaves the idle list and gives back its slot."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait_turn(self, limit: float) -> Connection | None:
        """At the cap: wait up to `limit` for an idle connection (returned) or a free slot (None)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while True:
            conn = self.get(time.monotonic())
            if conn is not None or self.open < self.max:
                return conn
            left = end - loop.time()
            if left <= 0:
                raise PoolTimeout("no free upstream connection within the pool timeout")
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                pass  # the loop sees the time is up
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: hand the turn on
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()

    def close(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


class _Tunnel(asyncio.Protocol):
    """The CONNECT exchange with a proxy, before TLS to the upstream starts inside the tunnel."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end != -1:
            if end + 4 != len(self._buf):  # the upstream speaks only after our TLS hello
                self._answer.set_exception(RemoteProtocolError("the proxy sent bytes after its answer"))
            else:
                self._answer.set_result(bytes(self._buf[:end]))
        elif len(self._buf) > MAX_HEAD_BYTES:
            self._answer.set_exception(RemoteProtocolError("the proxy's answer head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(ConnectError("the proxy closed the connection"))

    async def open(self, authority: str, auth: str | None) -> None:
        assert self.transport is not None
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if auth is not None:
            lines.append(f"Proxy-Authorization: {auth}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = (await self._answer).split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise RemoteProtocolError("the proxy did not answer CONNECT with HTTP")
        if not status_line[1].startswith(b"2") or len(status_line[1]) != 3:
            status = status_line[1][:3].decode("latin-1", "replace")
            raise ConnectError(f"the proxy refused the tunnel (HTTP {status})")


class Transport:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,  # default: the system's CAs, hostnames verified
        max_connections: int = 1024,
        pool_timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = 1024 * 1024,
        trust_env: bool = True,  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and lower-case)
    ) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        self.max_response_bytes = max_response_bytes
        self.max_event_bytes = max_event_bytes  # read by the SSE splitter of each stream
        self._pools: dict[tuple[tuple[str, str, int], TLSOptions | None], _Pool] = {}
        self._targets: dict[tuple[str, TLSOptions | None], _Target] = {}
        self._default_ssl = ssl_context
        self._contexts: dict[TLSOptions, ssl.SSLContext] = {}
        self._user_agent = f"portway/{__version__}"
        env = urllib.request.getproxies_environment() if trust_env else {}
        self._proxies = {s: _parse_proxy(env[s]) for s in ("http", "https") if env.get(s)}
        self._no_proxy = env.get("no")

    # -- configuration -----------------------------------------------------------------------------------

    def tls_context(self, tls: TLSOptions | None) -> ssl.SSLContext:
        """The SSLContext for a set of TLS options, made once (raises ValueError for a bad ca_file)."""
        if tls is None or tls == TLSOptions():
            if self._default_ssl is None:
                self._default_ssl = ssl.create_default_context()
            return self._default_ssl
        ctx = self._contexts.get(tls)
        if ctx is None:
            try:
                ctx = ssl.create_default_context(cafile=tls.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file {tls.ca_file!r} is not a readable PEM file: {exc}") from None
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._contexts[tls] = ctx
        return ctx

    def _target(self, url: str, tls: TLSOptions | None) -> _Target:
        found = self._targets.get((url, tls))
        if found is None:
            if len(self._targets) >= _MAX_URLS:
                self._targets.clear()
            found = self._targets[(url, tls)] = self._resolve(url, tls)
        return found

    def _resolve(self, url: str, tls: TLSOptions | None) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LocalProtocolError("not an http(s) URL")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        host = parts.hostname
        bracketed = host if ":" not in host else f"[{host}]"
        authority = f"{bracketed}:{port}"
        host_header = bracketed if port == (443 if https else 80) else authority
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = self._proxies.get(parts.scheme)
        if proxy is not None and _bypass(host, port, self._no_proxy):
            proxy = None
        lines = [f"Host: {host_header}", f"User-Agent: {self._user_agent}", "Accept-Encoding: identity"]
        if proxy is not None and not https:  # http through a proxy: absolute-form, the proxy reads it
            path = f"http://{host_header}{path}"
            if proxy.auth is not None:
                lines.append(f"Proxy-Authorization: {proxy.auth}")
        prefix = f" {path} HTTP/1.1\r\n" + "".join(f"{_clean(line)}\r\n" for line in lines)
        key = ((parts.scheme, host, port), tls)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self._keepalive, self._max_connections)
        ctx = self.tls_context(tls) if https else None
        return _Target(key[0], prefix, authority, ctx, proxy, pool)

    def _head(self, req: WireRequest, target: _Target) -> bytes:
        lines = [req.method, target.prefix, f"Content-Length: {len(req.body)}\r\n"]
        lines += [f"{_clean(k)}: {_clean(v)}\r\n" for k, v in req.headers.items()]
        extra = UPSTREAM_HEADERS.get()  # the attempt's traceparent, with tracing on (telemetry/tracing.py)
        if extra is not None:
            lines += [f"{_clean(k)}: {_clean(v)}\r\n" for k, v in extra.items() if k not in req.headers]
        lines.append("\r\n")
        try:
            return "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError("header values must be latin-1 text") from None

    # -- connecting ----------------------------------------------------------------------------------------

    async def _open(self, target: _Target, deadline: float | None) -> Connection:
        pool = target.pool
        loop = asyncio.get_running_loop()
        if pool.open >= pool.max:
            limit = self._pool_timeout
            if deadline is not None:
                limit = min(limit, deadline - loop.time())
            conn = await pool.wait_turn(limit)
            if conn is not None:
                return conn
        pool.open += 1
        try:
            conn = await self._connect(target, deadline)
        except BaseException:
            pool.open -= 1
            pool._wake_one()
            raise
        conn.counted = True
        if conn.closed:  # lost between connecting and now
            pool.forget(conn)
            raise ConnectError("the upstream closed the connection at once")
        return conn

    async def _connect(self, target: _Target, deadline: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        limit = self._connect_timeout
        if deadline is not None:
            limit = max(0.0, min(limit, deadline - loop.time()))
        where = target.proxy.where if target.proxy is not None else target.authority
        try:
            async with asyncio.timeout(limit):
                conn = await self._dial(loop, target)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {where} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"could not connect to {where}: {type(exc).__name__}") from None
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _dial(self, loop: asyncio.AbstractEventLoop, target: _Target) -> Connection:
        _, host, port = target.origin
        pool, proxy = target.pool, target.proxy
        if proxy is None:
            _, conn = await loop.create_connection(
                lambda: Connection(loop, pool),
                host,
                port,
                ssl=target.ssl,
                server_hostname=host if target.ssl is not None else None,
            )
            return conn
        if target.ssl is None:  # http through the proxy: the proxy is the peer
            _, conn = await loop.create_connection(lambda: Connection(loop, pool), proxy.host, proxy.port)
            return conn
        raw, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        try:
            await tunnel.open(target.authority, proxy.auth)
            conn = Connection(loop, pool)
            tls = await loop.start_tls(raw, conn, target.ssl, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        if tls is None:  # the tunnel went away during the handshake
            raise ConnectError(f"could not connect to {target.authority} through {proxy.where}")
        conn.connection_made(tls)
        return conn

    # -- requests ------------------------------------------------------------------------------------------

    async def send(
        self, req: WireRequest, *, timeout: float | None = None, read_timeout: float | None = None
    ) -> Response:
        """Send and return once the response headers are in; the caller reads (or releases) the body.

        `timeout`: seconds for the whole answer, connecting included (lifted by `Response.clear_deadline`,
        e.g. once a stream is committed); `read_timeout`: the longest gap between two arrivals of body.
        Raises only TransportError subclasses. The Response must be released or closed, also on error
        paths.
        """
        target = self._target(req.url, req.tls)
        head = self._head(req, target)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        conn = target.pool.get(time.monotonic()) or await self._open(target, deadline)
        response = conn.request(head, req.body, read_timeout, deadline, self.max_response_bytes)
        try:
            return await response.start()
        except BaseException:
            response.close()
            raise

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()
