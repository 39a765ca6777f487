"""SSE splitting and the streamed relay against a lying upstream (issue 11, defect 22).

An event that never ends must neither grow a buffer without limit nor copy quadratically, and the stream's
idle timeout counts gaps between whole events, so a trickle of bytes that never completes one still ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from portway.http.client import Transport
from portway.providers.base import ChatCall, ChatStream, FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.openai_compat import OpenAICompatProvider
from portway.providers.sse import EventSplitter, EventTooLarge
from tests.fakes.raw_upstream import SSE_HEAD, RawUpstream, chunk, raw_upstream

pytestmark = pytest.mark.timeout(30)

EVENTS = [
    b'data: {"id":"1","model":"m","choices":[{"delta":{"content":"he"}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"id":"1","choices":[{"delta":{"content":"llo"}}]}\r\n\r\n',
    b"event: x\ndata: a\ndata: b\n\n",
    b"data: [DONE]\n\n",
]


def test_any_split_of_the_bytes_gives_the_same_events() -> None:
    stream = b"".join(EVENTS)
    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        splitter = EventSplitter()
        got = [event for piece in pieces for event in splitter.feed(piece)]
        assert got == EVENTS and splitter.pending_bytes == 0


def test_byte_by_byte_crlf_terminator_is_found() -> None:
    splitter = EventSplitter()
    got = [e for b in b"data: 1\r\n\r\ndata: 2\n\n" for e in splitter.feed(bytes([b]))]
    assert got == [b"data: 1\r\n\r\n", b"data: 2\n\n"]


def test_an_event_past_the_cap_raises() -> None:
    splitter = EventSplitter(max_event_bytes=4096)
    splitter.feed(b"data: " + b"x" * 2000)
    with pytest.raises(EventTooLarge):
        for _ in range(10):
            splitter.feed(b"x" * 1000)
    with pytest.raises(EventTooLarge):  # a complete event larger than the cap, in one read
        EventSplitter(max_event_bytes=4096).feed(b"data: " + b"y" * 5000 + b"\n\n")


def test_a_long_unfinished_event_costs_linear_time() -> None:
    # 40,000 reads of 1 KiB without a terminator: concatenating the pending buffer on each read copies
    # ~800 GB (minutes); keeping the pieces and joining once is milliseconds.
    splitter = EventSplitter(max_event_bytes=64 << 20)
    piece = b"z" * 1024
    started = time.perf_counter()
    splitter.feed(b"data: ")
    for _ in range(40_000):
        assert splitter.feed(piece) == []
    (event,) = splitter.feed(b"\n\n")
    assert len(event) == 6 + 40_000 * 1024 + 2
    assert time.perf_counter() - started < 3


# -- the relay, over a raw upstream ----------------------------------------------------------------------


@pytest.fixture
async def up() -> AsyncIterator[RawUpstream]:
    async with raw_upstream() as raw:
        yield raw


async def open_stream(up: RawUpstream, transport: Transport, idle: float = 5.0) -> ChatStream:
    provider = OpenAICompatProvider(ProviderSettings("raw", "openai", up.base_url), transport)
    call = ChatCall({"messages": [{"role": "user", "content": "hi"}]}, "m", True, "k", 2.0, idle)
    result = await provider.chat(call)
    assert isinstance(result, ChatStream)
    return result


async def relay(stream: ChatStream) -> list[bytes]:
    got = []
    async with asyncio.timeout(5):  # a lax client relays on until this (and the test fails)
        async for event in stream:
            got.append(event)
    return got


async def test_an_event_that_never_ends_ends_the_stream_with_a_failure(up: RawUpstream) -> None:
    async def endless(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SSE_HEAD + chunk(EVENTS[0]) + chunk(b"data: "))
        while True:  # unpaced bytes of one event, forever
            writer.write(chunk(b"x" * 16384))
            await writer.drain()

    up.handlers.append(endless)
    stream = await open_stream(up, Transport(max_event_bytes=256 * 1024))
    got: list[bytes] = []
    with pytest.raises(UpstreamFailure) as info:
        got += await relay(stream)
    assert info.value.kind is FailureKind.BAD_RESPONSE


async def test_idle_timeout_fires_while_an_event_trickles_without_end(up: RawUpstream) -> None:
    async def trickle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SSE_HEAD + chunk(EVENTS[0]) + chunk(b"data: "))
        while True:  # a byte every 20 ms: never an idle gap on the wire, never a whole event
            writer.write(chunk(b"y"))
            await writer.drain()
            await asyncio.sleep(0.02)

    up.handlers.append(trickle)
    stream = await open_stream(up, Transport(), idle=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamFailure) as info:
        await relay(stream)
    assert info.value.kind is FailureKind.TIMEOUT
    assert loop.time() - started < 2


async def test_a_healthy_stream_still_relays_every_event(up: RawUpstream) -> None:
    async def healthy(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SSE_HEAD)
        for event in EVENTS:
            for i in range(0, len(event), 7):  # events cut across reads
                writer.write(chunk(event[i : i + 7]))
                await writer.drain()
                await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    up.handlers.append(healthy)
    stream = await open_stream(up, Transport(), idle=0.5)
    assert await relay(stream) == EVENTS
