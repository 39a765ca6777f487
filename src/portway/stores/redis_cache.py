"""The response cache's Redis store (cache.store: redis, or auto with PORTWAY_REDIS_URL): SET with EX, GET.

A client of its own (a small pool, apart from the limit counters' pool, so cached answers of a megabyte
never queue behind admissions). A read (on the request path) is bounded by `op_timeout`; a write (in the
background, after the answer) by `write_timeout`, so a busy moment does not drop entries. A failed read is a
miss and a failed write is dropped (logged once per outage), so Redis trouble never fails a request here.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from portway.stores.redis_client import redis_client

log = logging.getLogger("portway.cache")


class RedisCacheStore:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        op_timeout: float = 0.5,
        write_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        prefix: str = "portway:cache:",
        max_connections: int = 16,
    ) -> None:
        self._redis = redis_client(url, max_connections=max_connections, connect_timeout=connect_timeout)
        self._timeout = op_timeout
        self._write_timeout = max(op_timeout, write_timeout)
        self._prefix = prefix
        self._failing = False

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("response cache: Redis is not answering (%s); serving without the cache", exc)

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self._failing = False
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._redis.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        await self._redis.aclose()
