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
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._pending: list[UsageRecord] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="portway-usage-writer")

    def submit(self, record: UsageRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("usage queue full: %d records dropped so far (is the database down?)", self.dropped)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._pending.append(await self._queue.get())
            await self._collect()
            await self._flush()

    async def _collect(self) -> None:
        """Take what is queued now, waiting up to `interval` for a batch to fill."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.interval
        while len(self._pending) < self.batch_size:
            try:
                self._pending.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = until - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    self._pending.append(await self._queue.get())
            except TimeoutError:
                return

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
        """Stop the task and write everything still queued (bounded by `timeout`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            self._pending.append(self._queue.get_nowait())
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while self._pending and loop.time() < until:
            await self._flush()
        if self._pending:
            log.error("shutdown: %d usage records could not be written", len(self._pending))
