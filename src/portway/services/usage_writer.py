"""A bounded, batched background writer for usage records.

The hot path only appends to a list; a single task flushes batches of up to `batch_size` records, or
whatever arrived within `interval` seconds. A failed flush is retried (the batch is kept) so a database
hiccup loses nothing; shutdown drains the buffer. Only when the buffer is full - the database far behind
for a long time - is a record dropped, counted and logged, because blocking requests would be worse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from portway.stores.records import UsageRecord, UsageSink

log = logging.getLogger("portway.usage")


class UsageWriter:
    def __init__(
        self,
        sink: UsageSink,
        *,
        max_queue: int = 50_000,
        batch_size: int = 100,
        max_batch: int = 5_000,
        interval: float = 0.2,
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
        self.dropped = 0
        self.written = 0
        # A plain list, not an asyncio.Queue: a queue wakes the writer task once per record, which at a few
        # thousand requests per second was a measurable share of a worker's time. The writer wakes when the
        # first record of a batch arrives and when a batch is full, and otherwise sleeps `interval`.
        self._buffer: list[UsageRecord] = []  # submitted, not yet taken by the writer
        self._pending: list[UsageRecord] = []  # taken, kept until the database has them
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

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
            self._pending += self._buffer
            self._buffer = []

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending[: self.max_batch]
        try:
            await self.sink.write_usage(batch)
        except Exception:
            log.exception("writing %d usage records failed; will retry", len(batch))
            await asyncio.sleep(min(self.interval * 5, 2.0))
            return False
        del self._pending[: len(batch)]
        self.written += len(batch)
        return True

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
