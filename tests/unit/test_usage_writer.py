"""The usage writer: batches, retries, drains on shutdown, never writes a batch twice."""

from __future__ import annotations

import asyncio

from portway.services.usage_writer import UsageWriter
from portway.stores.records import UsageRecord


def rec(i: int) -> UsageRecord:
    return UsageRecord(float(i), f"r{i}", "master", "m", "p", "m", 200, 1.0)


class Sink:
    def __init__(self, delay: float = 0.0, failures: int = 0, after_commit: float = 0.0) -> None:
        self.delay = delay
        self.after_commit = after_commit
        self.failures = failures
        self.written: list[str] = []
        self.calls = 0

    async def write_usage(self, records: list[UsageRecord]) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database down")
        await asyncio.sleep(self.delay)
        self.written += [r.request_id for r in records]  # committed
        await asyncio.sleep(
            self.after_commit
        )  # e.g. releasing the connection: a cancel here must not rewrite


async def test_batches_and_drains_on_close() -> None:
    sink = Sink()
    writer = UsageWriter(sink, batch_size=10, interval=0.05)
    writer.start()
    for i in range(25):
        writer.submit(rec(i))
    await writer.aclose()
    assert sink.written == [f"r{i}" for i in range(25)]
    assert sink.calls <= 4  # batched, not one write per record


async def test_close_during_a_slow_flush_writes_each_record_once() -> None:
    sink = Sink(after_commit=0.3)
    writer = UsageWriter(sink, batch_size=5, interval=0.01)
    writer.start()
    for i in range(12):
        writer.submit(rec(i))
    await asyncio.sleep(0.05)  # the first batch is now being written
    await writer.aclose()
    assert sorted(sink.written) == sorted(f"r{i}" for i in range(12))  # no batch twice


async def test_failed_flush_is_retried_not_lost() -> None:
    sink = Sink(failures=2)
    writer = UsageWriter(sink, batch_size=100, interval=0.01)
    writer.start()
    writer.submit(rec(1))
    await writer.aclose(timeout=5)
    assert sink.written == ["r1"] and sink.calls == 3


async def test_full_queue_drops_and_counts_instead_of_blocking() -> None:
    writer = UsageWriter(Sink(), max_queue=3)
    for i in range(5):
        writer.submit(rec(i))  # never awaits: the hot path cannot block on the database
    assert writer.dropped == 2
    await writer.aclose()


async def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    sink = Sink()
    writer = UsageWriter(sink, batch_size=5, interval=30)
    writer.start()
    for i in range(5):
        writer.submit(rec(i))
    for _ in range(100):
        if sink.written:
            break
        await asyncio.sleep(0.01)
    assert sink.written == [f"r{i}" for i in range(5)]
    writer.submit(rec(5))  # a lone record waits for its batch (or the interval, or shutdown)
    await asyncio.sleep(0.05)
    assert len(sink.written) == 5
    await writer.aclose()
    assert sink.written[-1] == "r5"


async def test_a_writer_that_fell_behind_catches_up_in_large_batches() -> None:
    """When records pile up faster than the database takes them, each write takes up to max_batch of them:
    fewer, larger transactions instead of falling further behind (and growing the process without end)."""
    sink = Sink(delay=0.05)
    writer = UsageWriter(sink, batch_size=10, max_batch=500, interval=0.01)
    writer.start()
    writer.submit(rec(0))
    await asyncio.sleep(0.02)  # the first write is in progress: everything below piles up behind it
    for i in range(1, 1000):
        writer.submit(rec(i))
    await writer.aclose()
    assert sink.written == [f"r{i}" for i in range(1000)]
    assert sink.calls <= 5  # batches of 10 would have taken 100 writes
