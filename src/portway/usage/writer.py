"""A bounded, batched background writer for usage records.

The hot path only appends to a list; a single task flushes batches of up to `batch_size` records, or
whatever arrived within `interval` seconds. Records are sanitized when the writer takes them (NUL bytes,
over-long text, numbers no column takes), not per request.

Two kinds of failed flush are told apart. An outage (the database down, unreachable, frozen) keeps the batch
and retries it with backoff, so a hiccup loses nothing. A batch the database refuses for its data is split in
halves until the good rows land; a row refused on its own is dropped, counted and logged - one such row used
to be retried forever with every later record queued behind it. Shutdown drains the buffer. When the buffer
is full - the database far behind for a long time - a record is dropped, counted and logged, because blocking
requests would be worse. `health()` is what `/ready` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

from sqlalchemy import exc as sa_exc

from portway.usage.records import UsageRecord, UsageSink, sanitize

log = logging.getLogger("portway.usage")

_MAX_BACKOFF = 1.0  # as before: one retry a second while the database is down
_CREDENTIALS = re.compile(r"://[^/\s@]+@")


def _chain(exc: BaseException) -> list[BaseException]:
    """The error, what SQLAlchemy wrapped, and what the async adapter wrapped (asyncpg's own error)."""
    out = [exc]
    for _ in range(3):
        nxt = getattr(out[-1], "orig", None) or out[-1].__cause__
        if not isinstance(nxt, BaseException) or nxt in out:
            break
        out.append(nxt)
    return out


def is_data_error(exc: BaseException) -> bool:
    """True when the database refused these rows for what they hold, so retrying them cannot help; False
    for an outage (connection, timeout, operational, schema) that a retry may get past."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return False
    for err in _chain(exc):
        if isinstance(err, sa_exc.DataError | sa_exc.IntegrityError):
            return True
        state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):  # SQLSTATE data exception / constraint
            return True
    driver = _chain(exc)[-1]
    if isinstance(driver, OSError | TimeoutError) or "Config" in type(driver).__name__:
        return False
    # A parameter the driver could not encode (asyncpg's client-side DataError is a ValueError, a lone
    # surrogate a UnicodeEncodeError), or one SQLAlchemy could not process before sending.
    if isinstance(driver, ValueError | TypeError | ArithmeticError):
        return True
    return isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)


def describe(exc: BaseException) -> str:
    """A short account of a write error for logs and /ready: the driver's class and the first line of its
    message. Never SQLAlchemy's own text, which carries the statement's parameters (whole rows)."""
    err = _chain(exc)[-1]
    lines = str(err).strip().splitlines()
    msg = _CREDENTIALS.sub("://***@", lines[0])[:160] if lines else ""
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


class UsageWriter:
    def __init__(
        self,
        sink: UsageSink,
        *,
        max_queue: int = 50_000,
        batch_size: int = 100,
        max_batch: int = 5_000,
        interval: float = 0.2,
        failure_window: float = 30.0,
    ) -> None:
        # The writer wakes at `batch_size` records: each write is a burst of database CPU beside the event
        # loop, and on a busy host bursts of 500 rows showed up as ~1 ms in the c=1 latency p99. A writer
        # that fell behind (several workers taking turns at one SQLite file) writes up to `max_batch` at
        # once, so it catches up in fewer, larger transactions instead of falling further behind.
        self.sink = sink
        self.batch_size = batch_size
        self.max_batch = max(batch_size, max_batch)
        self.interval = interval
        self.max_queue = max_queue
        self.failure_window = failure_window
        self.dropped = 0  # every record lost: queue full, or refused by the database
        self.rejected = 0  # of those, refused by the database even alone
        self.written = 0
        self.last_error: str | None = None
        # A plain list, not an asyncio.Queue: a queue wakes the writer task once per record, which at a few
        # thousand requests per second was a measurable share of a worker's time. The writer wakes when the
        # first record of a batch arrives and when a batch is full, and otherwise sleeps `interval`.
        self._buffer: list[UsageRecord] = []  # submitted, not yet taken by the writer
        self._pending: list[UsageRecord] = []  # taken (and sanitized), kept until the database has them
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._last_flush: float | None = None  # monotonic time of the last write that succeeded
        self._failing_since: float | None = None  # first failure of the current outage
        self._writing_since: float | None = None  # a write in progress (a frozen database never fails)
        self._failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="portway-usage-writer")

    def submit(self, record: UsageRecord) -> None:
        buffer = self._buffer
        if len(buffer) >= self.max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full: %d records dropped so far (is the database down?)", self.dropped)
            return
        buffer.append(record)
        if len(buffer) == 1 or len(buffer) == self.batch_size:
            self._wake.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(False once writes have been failing, or one write hanging, longer than `failure_window`; what
        /ready shows). An idle writer is healthy however long ago it last wrote."""
        now = time.monotonic()
        since = [t for t in (self._failing_since, self._writing_since) if t is not None]
        failing = now - min(since) if since else 0.0
        report = {
            "backlog": len(self._buffer) + len(self._pending),
            "written": self.written,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "last_error": self.last_error,
            "seconds_since_flush": None if self._last_flush is None else round(now - self._last_flush, 3),
            "failing_seconds": round(failing, 3),
        }
        return failing <= self.failure_window, report

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if not self._stopping and len(self._buffer) < self.batch_size:
                await self._gather()
            self._take()
            while self._pending:
                if not await self._flush() and self._stopping:
                    return  # aclose() goes on draining, within its own deadline

    async def _gather(self) -> None:
        """Give a batch `interval` to fill; a full batch or a stop ends the wait early."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval):
                await self._wake.wait()
        self._wake.clear()

    def _take(self) -> None:
        if self._buffer:
            sanitize(self._buffer)
            self._pending += self._buffer
            self._buffer = []

    async def _write(self, batch: list[UsageRecord]) -> None:
        self._writing_since = time.monotonic()
        try:
            await self.sink.write_usage(batch)
        finally:
            self._writing_since = None

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending[: self.max_batch]
        try:
            await self._write(batch)
        except Exception as exc:
            if not is_data_error(exc):
                await self._outage(exc, len(batch))
                return False
            done, outage = await self._split(batch, exc)
            del self._pending[:done]
            if outage is not None:
                await self._outage(outage, len(batch) - done)
                return False
        else:
            del self._pending[: len(batch)]
            self.written += len(batch)
        self._last_flush = time.monotonic()
        self._failing_since = None
        self._failures = 0
        return True

    async def _split(self, batch: list[UsageRecord], error: Exception) -> tuple[int, Exception | None]:
        """Write a batch the database refused for its data in ever smaller parts, in order: the good rows
        land, a row refused alone is dropped. Returns how many leading records are settled (written or
        dropped), and the outage that cut the split short, if one did."""
        done = 0
        parts: list[tuple[list[UsageRecord], Exception | None]] = [(batch, error)]  # a stack, left first
        while parts:
            part, failed = parts.pop()
            if failed is None:
                try:
                    await self._write(part)
                except Exception as exc:
                    if not is_data_error(exc):
                        return done, exc
                    failed = exc
                else:
                    self.written += len(part)
                    done += len(part)
                    continue
            if len(part) == 1:
                self._reject(part[0], failed)
                done += 1
            else:
                mid = len(part) // 2
                parts += ((part[mid:], None), (part[:mid], None))
        return done, None

    def _reject(self, record: UsageRecord, exc: Exception) -> None:
        self.rejected += 1
        self.dropped += 1
        self.last_error = describe(exc)
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.error(
                "usage record %s dropped: the database refuses it (%s); %d refused so far",
                record.request_id,
                self.last_error,
                self.rejected,
            )

    async def _outage(self, exc: Exception, rows: int) -> None:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        self.last_error = describe(exc)
        if self._failures == 1 or self._failures % 30 == 0:
            log.error("writing %d usage records failed (%s); will retry", rows, self.last_error)
        await asyncio.sleep(min(self.interval * 2 ** min(self._failures, 16), _MAX_BACKOFF))

    async def aclose(self, timeout: float = 10.0) -> None:
        """Let the task finish its flush, then write everything still buffered (bounded by `timeout`).

        The task is told to stop, never cancelled mid-write: a cancel that lands after the database
        committed but before the batch is dropped from `_pending` would write it twice.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._take()
        while self._pending and loop.time() < until:
            await self._flush()
        if self._pending:
            log.error("shutdown: %d usage records could not be written", len(self._pending))
