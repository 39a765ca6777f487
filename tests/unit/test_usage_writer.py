"""The usage writer: batches, retries, drains on shutdown, never writes a batch twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import sqlalchemy as sa

from portway.usage.records import UsageRecord
from portway.usage.writer import UsageWriter, describe, is_data_error


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
    await _until(lambda: bool(sink.written))  # the first batch is committed, its write not yet over
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
    await _until(
        lambda: sink.calls == 1
    )  # the first write is in progress: everything below piles up behind it
    for i in range(1, 1000):
        writer.submit(rec(i))
    await writer.aclose()
    assert sink.written == [f"r{i}" for i in range(1000)]
    assert sink.calls <= 5  # batches of 10 would have taken 100 writes


class PickySink:
    """Refuses, as a database would for its data, every batch holding one of `refuse`; `down` is an outage."""

    def __init__(self, refuse: set[str], outage_on_call: int = 0) -> None:
        self.refuse = refuse
        self.outage_on_call = outage_on_call
        self.down = False
        self.written: list[str] = []
        self.calls = 0

    async def write_usage(self, records: list[UsageRecord]) -> None:
        self.calls += 1
        if self.down or self.calls == self.outage_on_call:
            raise sa.exc.OperationalError("INSERT ...", None, ConnectionRefusedError("connection refused"))
        if any(r.request_id in self.refuse for r in records):
            params = [(r.request_id, "sk-row-secret") for r in records]
            raise sa.exc.DataError("INSERT INTO request_log ...", params, ValueError("value refused"))
        self.written += [r.request_id for r in records]


async def _until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110  (polls the writer's state; no event to wait on)
            await asyncio.sleep(0.005)


async def test_a_row_the_database_refuses_is_dropped_and_the_rest_lands() -> None:
    sink = PickySink({"r7", "r13"})
    writer = UsageWriter(sink, batch_size=20, interval=0.01)
    writer.start()
    for i in range(20):
        writer.submit(rec(i))
    await _until(lambda: len(sink.written) == 18)
    assert sink.written == [f"r{i}" for i in range(20) if i not in (7, 13)]
    assert (writer.dropped, writer.rejected) == (2, 2)
    assert sink.calls < 20  # halves, not a write per row
    writer.submit(rec(20))  # the writer goes on: nothing queues behind a refused row
    await writer.aclose(timeout=2)
    assert sink.written[-1] == "r20"
    ok, report = writer.health()
    assert ok and report["dropped"] == 2 and report["backlog"] == 0
    assert report["last_error"] == "ValueError: value refused"  # the driver's words, never the rows


async def test_an_outage_in_the_middle_of_a_split_keeps_the_rest_for_retry() -> None:
    sink = PickySink({"r3"}, outage_on_call=3)  # 1: the batch, 2: its left half, 3: down
    writer = UsageWriter(sink, batch_size=8, interval=0.01)
    writer.start()
    for i in range(8):
        writer.submit(rec(i))
    await writer.aclose(timeout=3)
    assert sorted(sink.written) == sorted(f"r{i}" for i in range(8) if i != 3)  # each once
    assert writer.rejected == 1


async def test_ready_fails_once_writes_fail_longer_than_the_window_and_recovers() -> None:
    sink = PickySink(set())
    sink.down = True
    writer = UsageWriter(sink, batch_size=10, interval=0.01, failure_window=0.1)
    writer.start()
    assert writer.health()[0]
    writer.submit(rec(1))
    await _until(lambda: not writer.health()[0])
    report = writer.health()[1]
    assert report["failing_seconds"] >= 0.1 and report["backlog"] == 1  # rounded to the ms
    assert report["last_error"] == "ConnectionRefusedError: connection refused"
    sink.down = False
    await _until(lambda: writer.health()[0])
    assert sink.written == ["r1"] and writer.health()[1]["backlog"] == 0
    await writer.aclose()


async def test_an_idle_writer_stays_ready_and_a_hung_write_does_not() -> None:
    gate = asyncio.Event()

    class HangingSink(Sink):
        async def write_usage(self, records: list[UsageRecord]) -> None:
            await gate.wait()
            await super().write_usage(records)

    writer = UsageWriter(HangingSink(), batch_size=1, interval=0.01, failure_window=0.05)
    writer.start()
    writer.submit(rec(1))
    await _until(lambda: not writer.health()[0])  # frozen database: the write neither ends nor fails
    gate.set()
    await _until(lambda: writer.health()[1]["written"] == 1)
    await asyncio.sleep(0.1)  # idle for longer than the window
    assert writer.health()[0]
    await writer.aclose()


def test_data_errors_are_told_from_outages() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__("driver says no")
            self.sqlstate = sqlstate

    def dbapi(orig: Exception) -> sa.exc.DBAPIError:
        return sa.exc.DBAPIError("INSERT ...", None, orig)

    assert is_data_error(sa.exc.IntegrityError("INSERT", None, Exception("check")))
    assert is_data_error(dbapi(PgError("22001")))  # value too long, as asyncpg reports it
    assert is_data_error(sa.exc.InterfaceError("INSERT", None, ValueError("invalid input for $3")))
    assert not is_data_error(dbapi(PgError("57P01")))  # admin shutdown
    assert not is_data_error(sa.exc.OperationalError("INSERT", None, Exception("database is locked")))
    assert not is_data_error(sa.exc.ProgrammingError("INSERT", None, Exception("no such table")))
    assert not is_data_error(ConnectionRefusedError())
    assert not is_data_error(TimeoutError())
    hidden = describe(sa.exc.DataError("INSERT x", [("sk-row-secret",)], ValueError("bad\nsecond line")))
    assert hidden == "ValueError: bad"
    assert (
        describe(OSError("connect to postgresql://u:pw@db/x failed"))
        == "OSError: connect to postgresql://***@db/x failed"
    )
