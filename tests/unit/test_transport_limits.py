"""The upstream client against a lying upstream (raw sockets): hard deadline, body cap, compression, head
limits, bytes after the answer, and one error tree (issue 11, defects 17-21).

Each test scripts the exact bytes an upstream sends (tests/fakes/raw_upstream.py); the client is the real
one. Tests that would hang on a lax client are wrapped in asyncio.timeout so they fail instead.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import pytest

from portway.http.client import Transport, WireRequest
from portway.http.connection import _HIGH_WATER
from portway.http.errors import (
    ConnectError,
    ConnectTimeout,
    DecodingError,
    LocalProtocolError,
    NetworkError,
    PoolTimeout,
    ProtocolError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TimeoutException,
    TransportError,
)
from portway.providers.base import ChatCall, FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.openai_compat import OpenAICompatProvider
from tests.fakes.raw_upstream import RawUpstream, answer, flooding_upstream, forever, ok, raw_upstream, silent

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def up() -> AsyncIterator[RawUpstream]:
    async with raw_upstream() as raw:
        yield raw


def req(up: RawUpstream, **headers: str) -> WireRequest:
    return WireRequest("POST", up.url, {"Content-Type": "application/json", **headers}, b"{}")


async def drain(t: Transport, wire: WireRequest, pace: float = 0.0, **kw: float) -> tuple[int, int]:
    """Read an answer the way a relaying stream does (nothing kept, each chunk sent on to a client that
    takes `pace` seconds for it): (bytes read, largest chunk, i.e. what was buffered at once)."""
    r = await t.send(wire, **kw)
    total = peak = 0
    try:
        while chunk := await r.readany():
            total += len(chunk)
            peak = max(peak, len(chunk))
            await asyncio.sleep(pace)  # relaying it on yields to the loop, as a send to a client does
    finally:
        r.close()
    return total, peak


# -- 17: the deadline is hard; the body is capped ------------------------------------------------------


async def test_deadline_fires_while_unpaced_bytes_keep_arriving() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"
    t = Transport(max_response_bytes=1 << 40)  # the cap is not what ends this one
    loop = asyncio.get_running_loop()
    async with flooding_upstream(head, b"x" * (1 << 20)) as base:
        wire = WireRequest("POST", base + "/chat/completions", {}, b"{}")
        started = loop.time()
        with pytest.raises(ReadTimeout):
            async with asyncio.timeout(5):  # a lax client reads on until this (and the test fails)
                await drain(t, wire, pace=0.005, timeout=0.4)
        assert 0.35 < loop.time() - started < 2.0


async def test_deadline_fires_for_a_reader_that_never_waits(up: RawUpstream) -> None:
    # Data waiting unread is no excuse either: the deadline is for the whole answer.
    up.handlers.append(forever(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", b"y" * 65536))
    t = Transport(max_response_bytes=1 << 40)
    r = await t.send(req(up), timeout=0.3)
    await asyncio.sleep(0.5)  # a busy reader: the buffer is full (flow control holds it at the high water)
    with pytest.raises(ReadTimeout):
        await r.readany()  # what was buffered is dropped with the answer
    r.close()


async def test_body_over_the_cap_is_a_protocol_error_and_memory_stays_bounded(up: RawUpstream) -> None:
    up.handlers.append(
        forever(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"z" * 65536 + b"\r\n"
        )
    )
    t = Transport(max_response_bytes=4 << 20)
    got: list[int] = []
    with pytest.raises(RemoteProtocolError):
        async with asyncio.timeout(5):
            r = await t.send(req(up), timeout=30)
            try:
                while chunk := await r.readany():
                    got.append(len(chunk))
            finally:
                r.close()
    assert sum(got) <= 4 << 20 and max(got) <= _HIGH_WATER + 65536 + 16


# -- 18: compression ---------------------------------------------------------------------------------


async def test_portway_asks_for_no_compression(up: RawUpstream) -> None:
    up.handlers.append(answer(ok(b"{}")))
    t = Transport()
    async with await t.send(req(up)) as r:
        await r.read()
    assert b"\r\nAccept-Encoding: identity\r\n" in up.heads[0]


async def test_gzip_bomb_stops_at_the_cap(up: RawUpstream) -> None:
    bomb = gzip.compress(b"\0" * (32 << 20), compresslevel=9)  # ~32 KB on the wire, 32 MiB inflated
    up.handlers.append(answer(ok(bomb, "Content-Encoding: gzip\r\n")))
    t = Transport(max_response_bytes=1 << 20)
    r = await t.send(req(up))
    seen = 0
    with pytest.raises(DecodingError):
        while chunk := await r.readany():
            seen += len(chunk)
    assert seen <= 1 << 20
    r.close()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"this is not gzip at all"),
        ("gzip", gzip.compress(b'{"ok": true}' * 100)[:-20]),  # truncated
        ("gzip", gzip.compress(b"{}") + b"trailing junk"),
        ("deflate", b"\x00\x01\x02garbage"),
        ("br", b"\x0b\x02\x80{}\x03"),  # never asked for; portway does not decode it
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}"))),
    ],
    # Named, not shown: a gzip header holds the time it was made, and test ids must be the same in every
    # pytest-xdist worker.
    ids=["not-gzip", "truncated", "trailing-junk", "bad-deflate", "brotli", "gzip-twice"],
)
async def test_bad_content_encoding_is_a_decoding_error(up: RawUpstream, encoding: str, body: bytes) -> None:
    up.handlers.append(answer(ok(body, f"Content-Encoding: {encoding}\r\n")))
    t = Transport()
    with pytest.raises(DecodingError):
        async with await t.send(req(up)) as r:
            await r.read()


async def test_corrupt_gzip_is_bad_response_for_the_router_not_a_500(up: RawUpstream) -> None:
    up.handlers.append(answer(ok(b"not gzip", "Content-Encoding: gzip\r\n")))
    provider = OpenAICompatProvider(ProviderSettings("raw", "openai", up.base_url), Transport())
    call = ChatCall({"messages": [{"role": "user", "content": "hi"}]}, "m", False, "k", 5)
    with pytest.raises(UpstreamFailure) as info:  # before: zlib.error escaped (a 500, no fallback)
        await provider.chat(call)
    assert info.value.kind is FailureKind.BAD_RESPONSE


# -- 19: response head limits -------------------------------------------------------------------------


async def test_huge_header_line_is_refused(up: RawUpstream) -> None:
    up.handlers.append(
        answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (100 << 10) + b"\r\nContent-Length: 0\r\n\r\n")
    )
    with pytest.raises(RemoteProtocolError):
        await Transport().send(req(up), timeout=5)


async def test_endless_header_is_refused_long_before_the_deadline(up: RawUpstream) -> None:
    up.handlers.append(forever(b"HTTP/1.1 200 OK\r\nX-Endless: ", b"b" * 4096))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RemoteProtocolError):
        await Transport().send(req(up), timeout=10)
    assert loop.time() - started < 2


async def test_too_many_headers_are_refused(up: RawUpstream) -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(1000))
    up.handlers.append(answer(ok(b"{}", many)))
    with pytest.raises(RemoteProtocolError):
        await Transport().send(req(up), timeout=5)


async def test_a_normal_head_with_many_headers_is_fine(up: RawUpstream) -> None:
    some = "".join(f"X-H{i}: {'v' * 200}\r\n" for i in range(60))
    up.handlers.append(answer(ok(b"{}", some)))
    async with await Transport().send(req(up), timeout=5) as r:
        assert r.headers.get("x-h59") == "v" * 200 and await r.read() == b"{}"


# -- 20: bytes after a complete answer -----------------------------------------------------------------


async def test_second_message_in_the_same_read_is_not_merged(up: RawUpstream) -> None:
    up.handlers += [answer(ok(b"first") + ok(b"second", "X-Evil: 1\r\n")), answer(ok(b"fresh"))]
    t = Transport()
    async with await t.send(req(up)) as r:
        assert (r.status, r.headers.get("x-evil"), await r.read()) == (200, None, b"first")
    async with await t.send(req(up)) as r:
        assert await r.read() == b"fresh"
    assert up.connections == 2  # the lying connection was closed, not reused


async def test_second_message_after_the_answer_is_not_merged_nor_reused(up: RawUpstream) -> None:
    async def late_lie(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nevil")
        await writer.drain()
        return True

    up.handlers += [late_lie, answer(ok(b"fresh"))]
    t = Transport()
    r = await t.send(req(up))
    assert await r.read() == b"first"
    await asyncio.sleep(0.2)  # the unsolicited message arrives while the answer is still held
    assert (r.status, r.headers.get("content-length")) == (200, "5")
    r.release()
    async with await t.send(req(up)) as r:
        assert (r.status, await r.read()) == (200, b"fresh")
    assert up.connections == 2


# -- 21: one error tree -------------------------------------------------------------------------------


def test_error_tree_has_httpx_shape() -> None:
    for cls in (ConnectTimeout, ReadTimeout, PoolTimeout):
        assert issubclass(cls, TimeoutException) and not issubclass(cls, TimeoutError)
    assert issubclass(ConnectError, NetworkError) and issubclass(ReadError, NetworkError)
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)
    for base in (TimeoutException, NetworkError, ProtocolError, DecodingError):
        assert issubclass(base, TransportError) and not issubclass(base, OSError | zlib.error)


async def test_non_latin1_header_is_a_local_protocol_error(up: RawUpstream) -> None:
    with pytest.raises(LocalProtocolError):  # before: UnicodeEncodeError
        await Transport().send(req(up, **{"X-Name": "Zoë ☃"}))
    assert up.heads == []


@pytest.mark.parametrize(
    ("handler", "kind"),
    [
        (silent(5), FailureKind.TIMEOUT),
        (answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", keep=False), FailureKind.CONNECTION),
        (answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), FailureKind.BAD_RESPONSE),
        (answer(ok(b"{}", "Content-Encoding: zstd\r\n")), FailureKind.BAD_RESPONSE),
    ],
)
async def test_transport_errors_map_to_failure_kinds(
    up: RawUpstream, handler: object, kind: FailureKind
) -> None:
    up.handlers.append(handler)  # type: ignore[arg-type]
    provider = OpenAICompatProvider(ProviderSettings("raw", "openai", up.base_url), Transport())
    call = ChatCall({"messages": []}, "m", False, "k", 0.3)
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat(call)
    assert info.value.kind is kind


async def test_cancelled_request_closes_its_connection_at_once(up: RawUpstream) -> None:
    closed = asyncio.Event()

    async def half_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await reader.read(1)  # b"" once the client closes its side
        closed.set()
        return False

    up.handlers.append(half_then_wait)
    provider = OpenAICompatProvider(ProviderSettings("raw", "openai", up.base_url), Transport())
    task = asyncio.create_task(provider.chat(ChatCall({"messages": []}, "m", False, "k", 10)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # never swallowed
        await task
    async with asyncio.timeout(0.5):  # before: the connection was left draining for a second
        await closed.wait()
