"""The only place that does network IO to upstreams: one shared aiohttp ClientSession per worker.

Keep-alive pooling and TCP_NODELAY (aiohttp sets it on every connection) keep the per-request cost to a
write and a read. Timeouts are the caller's: the attempt loop owns the deadline, so the session has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from portway import __version__


@dataclass(slots=True)
class WireRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Transport:
    def __init__(self, *, connect_timeout: float = 10.0, pool_limit: int = 0) -> None:
        self._connect_timeout = connect_timeout
        self._pool_limit = pool_limit
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._pool_limit, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            auto_decompress=True,
            # A User-Agent of our own rather than skip_auto_headers: skipping takes aiohttp off its
            # fast path (a new header multidict built and sorted on every request).
            headers={"User-Agent": f"portway/{__version__}"},
            raise_for_status=False,
        )

    async def send(self, req: WireRequest, *, read_timeout: float | None = None) -> aiohttp.ClientResponse:
        """Send and return once the response headers are in; the caller reads (or releases) the body."""
        if self._session is None:
            self._session = self._open()
        timeout = self._timeouts.get(read_timeout)
        if timeout is None:  # a handful of distinct values (per-config idle timeouts): build each once
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=read_timeout
            )
            self._timeouts[read_timeout] = timeout
        return await self._session.request(
            req.method, req.url, data=req.body, headers=req.headers, timeout=timeout, allow_redirects=False
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
