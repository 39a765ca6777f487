"""Redis-backed admission counters, shared by every gateway process.

One Lua script does check-all-then-take-all for every limit of a request in a single round trip (EVALSHA),
so N processes admit exactly as many requests as the limits allow. The hot path never waits long on Redis:
each operation is bounded by the operation timeout (default 100 ms) and there are no retries. A circuit
breaker (``routing.breaker``, the key pool's) stops trying Redis for ``breaker_cooldown`` seconds after
``breaker_threshold`` consecutive errors; while Redis is unavailable each limit follows its ``fail_open``
policy (see ``limits.counters``).

Connecting happens before the first request: ``start`` fills the whole pool and loads the scripts within the
connect timeout (default 2 s). A cold pool made a burst right after start open dozens of connections inside
the 100 ms operation timeout, time out and fail open (81 of 200 admitted at rpm=50). If Redis cannot be
reached at start, connecting goes on in the background (``status`` stays "connecting", so readiness waits)
while limits follow their fail-open policy.

Known limitation: if Redis executes the admit script but the reply times out, the reservation is taken
without the caller knowing (fail-open limits admit anyway; a fail-closed budget refuses and its estimate
stays reserved until the counter's period ends).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from portway.limits.counters import (
    Counters,
    Decision,
    LimitPlan,
    LimitUsage,
    Reservation,
    as_plan,
    decide,
    degraded_decision,
    plan,
    usage_of,
)
from portway.limits.spec import Limit
from portway.routing.breaker import Breaker
from portway.stores.redis_client import redis_client
from portway.tasks import stop

log = logging.getLogger(__name__)

# KEYS[i] is limit i's counter; ARGV holds (amount, cap, ttl) per limit. Returns {refused, stored...}:
# refused = 1-based index of the first limit without room (0 = all taken), stored = values read before
# taking. The check mirrors limits.first_refusal exactly (including keys shared by several limits).
ADMIT_LUA = """
local stored, pending, refused = {}, {}, 0
for i = 1, #KEYS do
  local key = KEYS[i]
  stored[i] = tonumber(redis.call('GET', key) or '0')
  local used = stored[i] + (pending[key] or 0)
  local amount = tonumber(ARGV[3 * i - 2])
  local cap = tonumber(ARGV[3 * i - 1])
  if refused == 0 and (used >= cap or used + amount > cap) then
    refused = i
  end
  pending[key] = (pending[key] or 0) + amount
end
if refused == 0 then
  for i = 1, #KEYS do
    -- INCRBY 0 still creates the counter, so a zero estimate can be settled to real usage later.
    redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
    redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
  end
end
table.insert(stored, 1, refused)
return stored
"""

# KEYS[i] gets ARGV[i] added, never going below 0. A counter that already expired stays gone: its
# period is over, so late usage no longer matters (and re-creating it would leave it without a TTL).
SETTLE_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], ARGV[i])
    if v < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
"""


class RedisCounters(Counters):
    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 0.1,
        connect_timeout: float = 2.0,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 5.0,
        prefix: str = "portway:",
        max_connections: int = 64,
        queue_timeout: float = 5.0,
    ) -> None:
        # An operation is bounded by ``self._deadline``; the breaker handles outages.
        self._redis = redis_client(url, max_connections=max_connections, connect_timeout=connect_timeout)
        self._admit_script = self._redis.register_script(ADMIT_LUA)
        self._settle_script = self._redis.register_script(SETTLE_LUA)
        self._prefix = prefix
        self._breaker = Breaker(breaker_threshold, breaker_cooldown)
        # One EVALSHA normally; SCRIPT LOAD + EVALSHA once after a Redis restart (NOSCRIPT), a reconnect
        # after an outage. A cancelled read drops its connection (redis-py), so nothing is left half-read.
        self._deadline = socket_timeout
        # redis-py's pool raises at max_connections instead of waiting; this makes a burst queue briefly for
        # a connection instead, and tells a local burst apart from Redis failing (only the latter counts
        # toward the breaker, so a flood of requests cannot trip it and switch every limit to fail-open).
        self._connections = asyncio.Semaphore(max_connections)
        # Waiting for a free connection is bounded separately and more loosely than Redis I/O: a local burst
        # is not Redis trouble, and deciding it without Redis would let a burst past exact rate limits.
        self._queue_timeout = queue_timeout
        self._outage_logged = False
        self._saturation_logged_at = -math.inf
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._connected = False  # the pool was filled once: readiness
        self._connector: asyncio.Task[None] | None = None

    @property
    def breaker_open(self) -> bool:
        """True while Redis is considered down (admissions use the fail-open/closed policy)."""
        return self._breaker.tripped

    def status(self) -> str:
        if not self._connected:
            return "connecting"
        return "unreachable" if self._breaker.tripped else "ok"

    async def start(self) -> None:
        """Connect the whole pool before the first request, within the connect timeout; if Redis cannot be
        reached, keep trying in the background instead of holding up the start."""
        if self._connector is None and not await self._warm():
            self._connector = asyncio.create_task(self._keep_connecting(), name="portway-redis-connect")

    async def _keep_connecting(self, delay: float = 0.5) -> None:
        while True:
            await asyncio.sleep(delay)
            if await self._warm():
                return
            delay = min(delay * 2, 2.0)

    async def _warm(self) -> bool:
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._fill_pool()
        except (RedisError, OSError, TimeoutError) as exc:
            self._note_outage(exc)
            return False
        self._connected = True
        log.info("limits: connected to Redis (%d connections)", self._max_connections)
        return True

    async def _fill_pool(self) -> None:
        pool = self._redis.connection_pool
        held: list[Any] = []

        async def take() -> None:
            # Through the semaphore, like every call: the pool raises instead of waiting when it is full.
            await self._connections.acquire()
            try:
                held.append(await pool.get_connection())  # type: ignore[no-untyped-call]
            except BaseException:
                self._connections.release()
                raise

        try:
            await take()  # one first: an unreachable Redis costs one attempt, not one per connection
            async with asyncio.TaskGroup() as group:
                for _ in range(self._max_connections - 1):
                    group.create_task(take())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        finally:
            for conn in held:
                await pool.release(conn)
                self._connections.release()
        async with self._connections:
            # A restarted Redis has no scripts: loading them now spares the first burst a NOSCRIPT round.
            await self._redis.script_load(ADMIT_LUA)
            await self._redis.script_load(SETTLE_LUA)

    async def _call(self, op: Callable[[], Awaitable[Any]]) -> Any | None:
        """Run one Redis operation under the breaker and deadline; None means Redis is unavailable."""
        breaker = self._breaker
        now = time.monotonic()
        if not breaker.available(now):
            return None
        probe = breaker.on_acquire(now)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._connections.acquire()
        except BaseException as exc:
            # A starved or cancelled probe proved nothing: the next caller probes instead.
            breaker.abandon(probe=probe)
            if isinstance(exc, TimeoutError):
                self._note_saturation()
                return None
            raise
        try:
            async with asyncio.timeout_at(loop.time() + self._deadline):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            breaker.failure(time.monotonic(), probe=probe)
            self._note_outage(exc)
            return None
        except BaseException:
            breaker.abandon(probe=probe)
            raise
        finally:
            self._connections.release()
        breaker.success()
        if self._outage_logged:
            self._outage_logged = False
            log.info("limits: Redis is reachable again; counters are shared again")
        return result

    def _note_saturation(self) -> None:
        now = time.monotonic()
        if now - self._saturation_logged_at >= 60.0:
            self._saturation_logged_at = now
            log.warning(
                "limits: all %d Redis connections busy past the deadline; deciding without Redis",
                self._max_connections,
            )

    def _note_outage(self, exc: BaseException) -> None:
        # Once per outage: during one, every request would otherwise log the same line.
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "limits: Redis unavailable (%s: %s); rate limits fail open, budgets fail closed until it"
                " recovers",
                type(exc).__name__,
                exc,
            )

    async def admit(
        self, limits: Sequence[Limit] | LimitPlan, *, tokens: int, cost: float, now: float | None = None
    ) -> Decision:
        t = time.time() if now is None else now
        lp = as_plan(limits)
        if not lp.limits:
            return decide(lp, (), (), (), None, t)
        slots, amounts = lp.slots(t), lp.amounts(tokens, cost)
        keys = [self._prefix + s.key for s in slots]
        args = [v for s, amount in zip(slots, amounts, strict=True) for v in (amount, s.cap, s.ttl)]
        reply = await self._call(lambda: self._admit_script(keys=keys, args=args))
        if reply is None:
            return degraded_decision(lp.limits, self._breaker.cooldown)
        refused = int(reply[0])
        stored = [int(v) for v in reply[1:]]
        return decide(lp, slots, stored, amounts, refused - 1 if refused else None, t)

    async def _adjust(self, deltas: list[tuple[str, int]]) -> None:
        if not deltas:
            return
        keys = [self._prefix + k for k, _ in deltas]
        args = [d for _, d in deltas]
        # Best effort: a lost settle leaves the estimate in place, which errs on the safe side for budgets.
        await self._call(lambda: self._settle_script(keys=keys, args=args))

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        if reservation.open_for_settle():
            reservation.settled = True
            await self._adjust(reservation.adjustments(tokens=tokens, cost=cost))

    async def release(self, reservation: Reservation) -> None:
        if reservation.open_for_release():
            reservation.released = True
            await self._adjust(reservation.adjustments(tokens=0, cost=0.0))

    async def usage(self, limits: Sequence[Limit], now: float | None = None) -> list[LimitUsage]:
        t = time.time() if now is None else now
        if not limits:
            return []
        slots = [plan(limit, now=t) for limit in limits]
        keys = [self._prefix + s.key for s in slots]
        values = await self._call(lambda: self._redis.mget(keys))
        stored: list[int | None] = (
            [None] * len(slots) if values is None else [int(v) if v is not None else 0 for v in values]
        )
        return [usage_of(limit, s, v) for limit, s, v in zip(limits, slots, stored, strict=True)]

    async def aclose(self) -> None:
        await stop(self._connector)
        await self._redis.aclose()
