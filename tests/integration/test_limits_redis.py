"""Admission limits on the Redis backend: exactness across processes, and behaviour while Redis is down.

Tests that break Redis run their own throwaway redis-server so the shared one at 127.0.0.1:6379 (used by
other test runs on this machine) is never disturbed. Every test uses its own random key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from portway import errors
from portway.limits.counters import Decision, raise_for
from portway.limits.redis import RedisCounters
from portway.limits.spec import Limit, LimitKind
from tests import services
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

pytestmark = pytest.mark.redis

SHARED_URL = services.REDIS_URL
NOW = 1_710_072_030.0  # a fixed instant, so a minute boundary can't split one test's admissions
HANG_BOUND = 0.5  # "never hangs": each admit returns within this, whatever Redis does


def rpm(scope: str, n: float) -> Limit:
    return Limit(scope, LimitKind.RPM, n)


def budget(scope: str, usd: float, period: str = "daily") -> Limit:
    return Limit(scope, LimitKind.BUDGET, usd, period)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(SHARED_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (aioredis.ConnectionError, OSError):
        pytest.skip("no Redis server at 127.0.0.1:6379")
    finally:
        await client.aclose()
    value = f"portway-test:{uuid.uuid4().hex}:"
    yield value
    await _delete_prefix(SHARED_URL, value)


@pytest.fixture
async def counters(prefix: str) -> AsyncIterator[RedisCounters]:
    # A generous timeout: these tests are about atomicity, and 200 coroutines on a busy CI box can delay a
    # reply past 100 ms, which would turn into (correct, but here unwanted) fail-open admissions.
    c = RedisCounters(SHARED_URL, prefix=prefix, socket_timeout=2.0)
    yield c
    await c.aclose()


async def timed_admit(c: RedisCounters, limits: list[Limit], **kw: float) -> Decision:
    started = time.perf_counter()
    decision = await c.admit(limits, tokens=int(kw.get("tokens", 1)), cost=kw.get("cost", 0.01))
    assert time.perf_counter() - started < HANG_BOUND
    return decision


async def test_200_concurrent_admits_against_50_let_exactly_50_through(counters: RedisCounters) -> None:
    limits = [rpm("key:k1", 50)]
    decisions = await asyncio.gather(
        *(counters.admit(limits, tokens=5, cost=0.0, now=NOW) for _ in range(200))
    )
    assert not any(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 50
    [u] = await counters.usage(limits, now=NOW)
    assert (u.used, u.remaining, u.known) == (50, 0, True)


async def test_a_burst_larger_than_the_pool_queues_instead_of_failing_open(prefix: str) -> None:
    c = RedisCounters(SHARED_URL, prefix=prefix, socket_timeout=2.0, max_connections=2)
    try:
        limits = [rpm("key:k1", 50)]
        decisions = await asyncio.gather(*(c.admit(limits, tokens=1, cost=0.0, now=NOW) for _ in range(200)))
        assert not any(d.degraded for d in decisions)
        assert sum(d.allowed for d in decisions) == 50
        assert not c.breaker_open
    finally:
        await c.aclose()


class SlowConnects:
    """A TCP proxy in front of the shared Redis whose new connections answer only after ``delay``: connecting
    is slow (a cold host, TLS, a remote Redis), every later round trip is not."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.url = ""
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SlowConnects:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()  # each pump sees the end and finishes (a delayed one after its delay)
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        redis_r, redis_w = await asyncio.open_connection(*services.address(SHARED_URL, 6379))
        self.writers += [client_w, redis_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            with contextlib.suppress(OSError):
                first = await src.read(65536)
                await asyncio.sleep(delay)
                while first:
                    dst.write(first)
                    await dst.drain()
                    first = await src.read(65536)
            dst.close()

        await asyncio.gather(pump(client_r, redis_w, 0.0), pump(redis_r, client_w, self.delay))


async def test_cold_starts_with_slow_connects_admit_exactly_the_limit(prefix: str) -> None:
    """Regression: each connection used to be opened inside the operation timeout, so a burst right after
    start timed out connecting and failed open (81, 69, 71, 74 of 200 admitted at rpm=50). Now ``start``
    fills the pool within the connect timeout, and the burst is exact: four cold starts of two gateways."""
    async with SlowConnects(delay=0.6) as proxy:
        for round_ in range(4):
            limits = [rpm(f"key:cold{round_}", 50)]
            gateways = [
                RedisCounters(
                    proxy.url, prefix=prefix, socket_timeout=0.5, connect_timeout=2.0, max_connections=16
                )
                for _ in range(2)
            ]
            try:
                assert [g.status() for g in gateways] == ["connecting", "connecting"]
                await asyncio.gather(*(g.start() for g in gateways))
                assert [g.status() for g in gateways] == ["ok", "ok"]
                burst = [g.admit(limits, tokens=1, cost=0.0, now=NOW) for g in gateways for _ in range(200)]
                decisions = await asyncio.gather(*burst)
                assert sum(d.degraded for d in decisions) == 0
                assert sum(d.allowed for d in decisions) == 50
            finally:
                await asyncio.gather(*(g.aclose() for g in gateways))


async def test_start_with_redis_down_is_bounded_and_keeps_connecting(own_redis: ThrowawayRedis) -> None:
    await own_redis.kill()
    c = RedisCounters(own_redis.url, connect_timeout=0.5)
    try:
        started = time.perf_counter()
        await c.start()  # refused at once: start goes on, limits fail open/closed, connecting goes on
        assert time.perf_counter() - started < 0.5
        assert c.status() == "connecting"
        d = await timed_admit(c, [rpm("key:k1", 1)])
        assert d.allowed and d.degraded
        await own_redis.start()
        for _ in range(100):  # the background retry backs off from 0.5 s
            if c.status() == "ok":
                break
            await asyncio.sleep(0.05)
        assert c.status() == "ok"
    finally:
        await c.aclose()


CHILD = """
import asyncio, sys
from portway.limits.spec import Limit, LimitKind
from portway.limits.redis import RedisCounters

async def main(url: str, prefix: str, now: float) -> None:
    c = RedisCounters(url, prefix=prefix, socket_timeout=2.0)
    limits = [Limit("key:shared", LimitKind.RPM, 50)]
    await c.start()  # connect before the start line, so both processes race for real
    print("ready", flush=True)
    sys.stdin.readline()  # the start line: the parent says go once both are connected
    ds = await asyncio.gather(*(c.admit(limits, tokens=1, cost=0.0, now=now) for _ in range(200)))
    print(sum(d.allowed for d in ds), sum(d.degraded for d in ds))
    await c.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


async def test_two_processes_sharing_redis_admit_exactly_the_limit(prefix: str) -> None:
    argv = [SHARED_URL, prefix, str(NOW)]
    pipes = {
        "stdin": asyncio.subprocess.PIPE,
        "stdout": asyncio.subprocess.PIPE,
        "stderr": asyncio.subprocess.PIPE,
    }
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, *argv, **pipes) for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        async with asyncio.timeout(30):
            ready = await p.stdout.readline()
        assert ready == b"ready\n", ready
    outputs = await asyncio.gather(*(p.communicate(b"go\n") for p in procs))
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    results = [tuple(map(int, out.split())) for out, _ in outputs]
    assert sum(degraded for _, degraded in results) == 0
    assert sum(allowed for allowed, _ in results) == 50


async def test_all_or_nothing_and_settle_release(counters: RedisCounters) -> None:
    ip, key = rpm("ip:10.0.0.1", 10), rpm("key:k1", 1)
    tokens, cash = Limit("key:k1", LimitKind.TPM, 1000), budget("user:u1", 1.0, "monthly")
    limits = [ip, key, tokens, cash]
    first = await counters.admit(limits, tokens=300, cost=0.25, now=NOW)
    second = await counters.admit(limits, tokens=300, cost=0.25, now=NOW)
    assert first.allowed and not second.allowed
    assert second.denied == key
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-remaining-tokens"] == "700"
    used = [u.used for u in await counters.usage(limits, now=NOW)]
    assert used == [1, 1, 300, 0.25]  # the refusal took nothing
    await counters.settle(first.reservation, tokens=420, cost=0.1)
    assert [u.used for u in await counters.usage(limits, now=NOW)] == [1, 1, 420, 0.1]
    third = await counters.admit([ip, tokens, cash], tokens=100, cost=0.5, now=NOW)
    await counters.release(third.reservation)
    assert [u.used for u in await counters.usage(limits, now=NOW)] == [2, 1, 420, 0.1]
    # A zero estimate still leaves a counter to settle real usage into.
    fourth = await counters.admit([tokens, cash], tokens=0, cost=0.0, now=NOW)
    await counters.settle(fourth.reservation, tokens=80, cost=0.15)
    assert [u.used for u in await counters.usage(limits, now=NOW)] == [2, 1, 500, 0.25]


async def test_budget_is_not_overshot_beyond_in_flight_reservations(counters: RedisCounters) -> None:
    limit = [budget("user:u1", 1.0)]
    first = await asyncio.gather(*(counters.admit(limit, tokens=0, cost=0.30, now=NOW) for _ in range(20)))
    admitted = [d for d in first if d.allowed]
    assert len(admitted) == 3
    await asyncio.gather(*(counters.settle(d.reservation, tokens=0, cost=0.10) for d in admitted))
    second = await asyncio.gather(*(counters.admit(limit, tokens=0, cost=0.30, now=NOW) for _ in range(20)))
    assert sum(d.allowed for d in second) == 2
    [u] = await counters.usage(limit, now=NOW)
    assert u.used == pytest.approx(0.90)


async def test_every_counter_key_has_a_ttl(counters: RedisCounters, prefix: str) -> None:
    limits = [
        rpm("key:k1", 10),
        Limit("key:k1", LimitKind.TPM, 1000),
        Limit("key:k1", LimitKind.DAILY_REQUESTS, 10),
        budget("user:u1", 5, "daily"),
        budget("user:u1", 5, "monthly"),
        budget("user:u1", 5, "total"),
    ]
    d = await counters.admit(limits, tokens=10, cost=0.01)
    await counters.settle(d.reservation, tokens=20, cost=0.02)
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert len(keys) == len(limits)
        assert all([await client.ttl(k) > 0 for k in keys])
    finally:
        await client.aclose()


async def test_unreachable_redis_fails_open_for_rates_and_closed_for_budgets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = RedisCounters(f"redis://127.0.0.1:{free_port()}/0", breaker_threshold=3, breaker_cooldown=5.0)
    rates = [
        rpm("ip:10.0.0.1", 1),
        Limit("key:k1", LimitKind.TPM, 1),
        Limit("key:k1", LimitKind.DAILY_REQUESTS, 1),
    ]
    caplog.set_level(logging.WARNING, logger="portway.limits.redis")
    try:
        for _ in range(5):
            d = await timed_admit(c, rates, tokens=100)
            assert d.allowed and d.degraded
        assert c.breaker_open
        refused = await timed_admit(c, [*rates, budget("user:u1", 100.0)])
        assert not refused.allowed
        assert refused.denied == budget("user:u1", 100.0)
        assert refused.retry_after == 5.0
        with pytest.raises(errors.BudgetExceeded) as info:
            raise_for(refused)
        assert info.value.headers["Retry-After"] == "5"
        # Explicit choices override the kind's default.
        assert not (await timed_admit(c, [Limit("ip:x", LimitKind.RPM, 9, fail_open=False)])).allowed
        assert (await timed_admit(c, [Limit("u:x", LimitKind.BUDGET, 9, "total", fail_open=True)])).allowed
        # Settling and reading usage during an outage neither raise nor hang.
        await c.settle(d.reservation, tokens=5, cost=0.0)
        assert not any(u.known for u in await c.usage(rates))
    finally:
        await c.aclose()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once per outage


class ThrowawayRedis:
    """A private redis-server this test may kill, freeze and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            for _ in range(100):
                with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process must be able to die
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)


@pytest.fixture
async def own_redis() -> AsyncIterator[ThrowawayRedis]:
    services.require("redis_server")
    server = ThrowawayRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def test_redis_killed_mid_test_then_restarted_breaker_recovers(own_redis: ThrowawayRedis) -> None:
    c = RedisCounters(own_redis.url, breaker_threshold=2, breaker_cooldown=0.5)
    rate, cash = [rpm("key:k1", 100)], [budget("user:u1", 10.0)]
    try:
        healthy = await timed_admit(c, rate + cash)
        assert healthy.allowed and not healthy.degraded
        await own_redis.kill()
        for _ in range(5):
            d = await timed_admit(c, rate)
            assert d.allowed and d.degraded
            refused = await timed_admit(c, rate + cash)
            assert (refused.allowed, refused.denied, refused.retry_after) == (False, cash[0], 0.5)
        assert c.breaker_open
        await own_redis.start()
        await asyncio.sleep(0.6)  # the cooldown; then the next call probes Redis and closes the breaker
        fresh = [rpm("key:fresh", 1)]
        d = await timed_admit(c, fresh)
        assert d.allowed and not d.degraded
        assert not c.breaker_open
        # Counting is live again (a fail-open admission would have let this through).
        assert not (await timed_admit(c, fresh)).allowed
        assert (await timed_admit(c, cash)).allowed
    finally:
        await c.aclose()


async def test_frozen_redis_never_makes_an_admit_hang(own_redis: ThrowawayRedis) -> None:
    c = RedisCounters(own_redis.url, breaker_threshold=3, breaker_cooldown=5.0)
    rate, cash = [rpm("key:k1", 100)], [budget("user:u1", 10.0)]
    try:
        assert not (await timed_admit(c, rate)).degraded
        own_redis.freeze()  # accepts connections, never answers: only the socket timeout saves us
        for _ in range(4):
            d = await timed_admit(c, rate)
            assert d.allowed and d.degraded
            assert not (await timed_admit(c, cash)).allowed
        results = await asyncio.gather(*(timed_admit(c, rate) for _ in range(20)))
        assert all(r.allowed for r in results)
        assert c.breaker_open
    finally:
        await c.aclose()


async def test_ready_waits_for_redis_and_start_does_not(
    own_redis: ThrowawayRedis, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A gateway whose Redis is down at start serves (/health), is not ready, and becomes ready by itself
    once Redis is there: the pool is connected in the background."""
    await own_redis.kill()
    env = {"PORTWAY_REDIS_URL": own_redis.url, "PORTWAY_REDIS_CONNECT_TIMEOUT": "0.5"}
    proc = await asyncio.to_thread(PortwayProcess, tmp_path, gateway_config(upstream), env=env)
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=5) as client:
            r = await client.get("/ready")
            assert r.status_code == 503 and r.json()["checks"]["redis"] == "connecting", r.text
            await own_redis.start()
            for _ in range(80):  # background retries back off from 0.5 s to 2 s
                r = await client.get("/ready")
                if r.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 200 and r.json()["checks"]["redis"] == "ok", r.text
    finally:
        await asyncio.to_thread(proc.stop)
