"""The one way portway opens a Redis pool (the limit counters, the response cache): fail fast, never retry."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(url: str, *, max_connections: int, connect_timeout: float) -> aioredis.Redis:
    """A pool whose own timeouts bound only connecting (TCP, TLS and the handshake's replies): each caller
    bounds an operation with its own deadline, which also covers a reconnect. Retrying would multiply the
    worst-case latency of a request; callers ride out outages themselves (a breaker, a cache miss)."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=connect_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return client
