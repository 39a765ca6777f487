"""The only place that does network IO to upstreams: one shared aiohttp ClientSession per worker.

Keep-alive pooling and TCP_NODELAY (aiohttp sets it on every connection) keep the per-request cost to a
write and a read. Timeouts are the caller's: the attempt loop owns the deadline, so the session has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp


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

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._pool_limit, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            raise_for_status=False,
        )

    async def send(self, req: WireRequest, *, read_timeout: float | None = None) -> aiohttp.ClientResponse:
        """Send and return once the response headers are in; the caller reads (or releases) the body."""
        if self._session is None:
            self._session = self._open()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect_timeout, sock_read=read_timeout
        )
        return await self._session.request(
            req.method, req.url, data=req.body, headers=req.headers, timeout=timeout, allow_redirects=False
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
