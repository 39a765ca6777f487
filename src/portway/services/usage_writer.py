"""A bounded, batched background writer for usage records.

The hot path only does `put_nowait`; a single task flushes batches of up to `batch_size` records, or whatever
arrived within `interval` seconds. A failed flush is retried (the batch is kept) so a database hiccup loses
nothing; shutdown drains the queue. Only when the queue is full - the database far behind for a long time -
is a record dropped, counted and logged, because blocking requests would be worse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from portway.stores.records import UsageRecord, UsageSink

log = logging.getLogger("portway.usage")


class UsageWriter:
    def __init__(
        self, sink: UsageSink, *, max_queue: int = 50_000, batch_size: int = 500, interval: float = 0.2
    ) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.interval = interval
        self.dropped = 0
        self.written = 0
        # Unbounded queue, bound enforced in submit(): the stop sentinel (None) must always fit.
        self._queue: asyncio.Queue[UsageRecord | None] = asyncio.Queue()
        self.max_queue = max_queue
        self._task: asyncio.Task[None] | None = None
        self._pending: list[UsageRecord] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="portway-usage-writer")

    def submit(self, record: UsageRecord) -> None:
        if self._queue.qsize() < self.max_queue:
            self._queue.put_nowait(record)
        else:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full: %d records dropped so far (is the database down?)", self.dropped)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                first = await self._queue.get()
                if first is None:
                    return
                self._pending.append(first)
            stopping = await self._collect()
            await self._flush()
            if stopping:
                return

    async def _collect(self) -> bool:
        """Take what is queued now, waiting up to `interval` for a batch to fill; True once told to stop."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.interval
        while len(self._pending) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = until - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    return False
            if item is None:
                return True
            self._pending.append(item)
        return False

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        batch = self._pending[: self.batch_size]
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
        """Let the task finish its flush, then write everything still queued (bounded by `timeout`).

        The task is told to stop with a sentinel, never cancelled mid-write: a cancel that lands after the
        database committed but before the batch is dropped from `_pending` would write it twice.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._pending.append(item)
        while self._pending and loop.time() < until:
            await self._flush()
        if self._pending:
            log.error("shutdown: %d usage records could not be written", len(self._pending))
