"""Hostile and careless peers against portway's HTTP/1.1 protocol, run by a real uvicorn server, over raw
sockets: stalled heads and bodies (read_timeout), data after `Connection: close`, head caps, the
connection limit (uvicorn's limit_concurrency)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn

from portway.http.server import HttpProtocol, ServerLimits, protocol_factory
from tests.unit.test_http_server import Events, closed, make_app, post, read_reply

READ_TIMEOUT = 0.4


@contextlib.asynccontextmanager
async def serve(
    app: Any = None, *, limits: ServerLimits | None = None, **options: Any
) -> AsyncIterator[uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = limits or ServerLimits(read_timeout=READ_TIMEOUT)
    config = uvicorn.Config(
        app or make_app(Events()),
        host="127.0.0.1",
        port=port,
        http=functools.partial(HttpProtocol, limits=limits),  # type: ignore[arg-type]
        ws="none",
        lifespan="off",
        log_level="critical",
        server_header=False,
        **{"timeout_keep_alive": 5, **options},
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(200):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    assert srv.started
    try:
        yield srv
    finally:
        srv.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def connect(srv: uvicorn.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.config.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (fails if it stays open past `seconds`)."""
    start = time.monotonic()
    assert await closed(reader, timeout=seconds)
    return time.monotonic() - start


# -- 12: read_timeout, at any point of a request ---------------------------------------------------------


async def test_a_body_stalled_after_an_early_answer_is_closed() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(post("/reject", b"y" * 1000).replace(b"Content-Length: 1000", b"Content-Length: 300000"))
        assert (await read_reply(reader)).status == 413
        # The rest of the body never comes: keep-alive is 5 s, the read timeout closes it much sooner.
        assert await closed_within(reader, 2) < 1.5
        writer.close()


async def test_a_body_trickling_after_an_early_answer_gets_read_timeout_in_all() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(post("/reject", b"y" * 10).replace(b"Content-Length: 10", b"Content-Length: 300000"))
        assert (await read_reply(reader)).status == 413
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while time.monotonic() - start < 3 and not reader.at_eof():
                writer.write(b"y")  # progress every 50 ms never makes a stall
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1), 0.05)
        assert time.monotonic() - start < 1.5 and reader.at_eof()
        writer.close()


async def test_a_stalled_body_the_app_waits_for_is_closed_and_the_app_sees_a_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] == "http.request" and message["more_body"]:
            pass
        seen.append(message["type"])

    async with serve(app) as srv:
        reader, writer = await connect(srv)
        writer.write(post("/", b"x" * 10).replace(b"Content-Length: 10", b"Content-Length: 100"))
        assert await closed_within(reader, 2) < 1.5
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == ["http.disconnect"]
        writer.close()


async def test_a_body_that_keeps_coming_is_not_cut() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        body = b"z" * 40
        writer.write(post("/echo", b"").replace(b"Content-Length: 0", b"Content-Length: 40"))
        for i in range(0, 40, 4):  # 10 pieces, 0.1 s apart: 1 s in all, 2.5 x the read timeout
            writer.write(body[i : i + 4])
            await writer.drain()
            await asyncio.sleep(0.1)
        assert (await read_reply(reader)).body == body
        writer.close()


async def test_a_slowloris_head_is_closed_within_read_timeout_of_its_first_byte() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        head = b"GET /head HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in head:  # one byte every 50 ms: always progress, never a whole head
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                        break
        # keep-alive is 5 s: only the head's own deadline closes it this soon
        assert time.monotonic() - start < 1.5 and reader.at_eof()
        writer.close()


async def test_a_stalled_head_after_a_first_request_is_closed() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(post("/echo", b"first"))
        assert (await read_reply(reader)).body == b"first"
        writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\n")
        assert await closed_within(reader, 2) < 1.5
        writer.close()


async def slow_app(scope: Any, receive: Any, send: Any) -> None:
    """Works a second (2.5 x the read timeout) before it reads the body, then echoes it."""
    await asyncio.sleep(1.0)
    body = b""
    while (message := await receive())["type"] == "http.request":
        body += message["body"]
        if not message["more_body"]:
            break
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def test_an_app_slow_to_read_a_large_body_is_not_the_clients_stall() -> None:
    async with serve(slow_app) as srv:
        reader, writer = await connect(srv)
        body = b"s" * 1_000_000  # past the buffering high-water mark: reading pauses while the app works
        writer.write(post("/", body))
        assert (await read_reply(reader)).body == body
        writer.close()


async def test_a_stalled_head_behind_a_request_being_answered_ends_the_connection_after_it() -> None:
    async with serve(slow_app) as srv:
        reader, writer = await connect(srv)
        writer.write(post("/", b"first") + b"GET /next HTTP/1.1\r\nHost: t\r\n")  # the second head stalls
        reply = await read_reply(reader)
        assert reply.body == b"first" and not reply.keep_alive  # the answer in progress is finished
        assert await closed_within(reader, 1) < 0.5
        writer.close()


async def test_an_idle_connection_waits_for_keepalive_not_read_timeout() -> None:
    async with serve(timeout_keep_alive=1) as srv:
        reader, writer = await connect(srv)
        writer.write(post("/echo", b"first"))
        await read_reply(reader)
        await asyncio.sleep(0.6)  # longer than read_timeout, shorter than keep-alive
        writer.write(post("/echo", b"second"))
        assert (await read_reply(reader)).body == b"second"
        assert 0.5 < await closed_within(reader, 3) < 2
        writer.close()


# -- 13: data after Connection: close ----------------------------------------------------------------------


async def test_bytes_after_connection_close_do_not_turn_the_answer_into_a_400() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(
            b"GET /head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            b"GET /head HTTP/1.1\r\nHost: t\r\n\r\nthis is not even HTTP"
        )
        data = await asyncio.wait_for(reader.read(), 5)  # to EOF
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"hello")
        assert data.count(b"HTTP/1.1") == 1 and b"connection: close" in data
        writer.close()


async def test_a_body_after_connection_close_is_still_served() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(post("/echo", b"payload", "Connection: close\r\n") + b"GARBAGE\r\n\r\n")
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.body == b"payload"
        assert await closed(reader)
        writer.close()


# -- 14: caps on the request head --------------------------------------------------------------------------


async def test_a_header_over_max_header_bytes_is_a_431() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 17 * 1024 + b"\r\n\r\n")
        reply = await read_reply(reader)
        assert reply.status == 431 and not reply.keep_alive
        assert orjson.loads(reply.body)["error"]["code"] == "request_headers_too_large"
        assert await closed(reader)
        writer.close()


async def test_more_headers_than_max_header_count_is_a_431() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        assert (await read_reply(reader)).status == 431
        assert await closed(reader)
        writer.close()


async def test_a_header_flood_is_refused_before_it_grows() -> None:
    """A header line that never ends: refused once whole reads pass the cap, not buffered to the end."""
    async with serve() as srv:
        reader, writer = await connect(srv)
        writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\nX-Flood: ")
        sent, refused = 0, b""
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024 and not refused:
                writer.write(b"f" * 16384)
                sent += 16384
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    refused = await asyncio.wait_for(reader.read(65536), 0.001)
        refused += await asyncio.wait_for(reader.read(65536), 2)
        assert refused.startswith(b"HTTP/1.1 431 ")
        assert sent < 8 * 1024 * 1024  # the cap plus what was in flight, nowhere near the 64 MB offered
        writer.close()


async def test_heads_within_the_caps_pass_even_in_large_reads() -> None:
    async with serve() as srv:
        reader, writer = await connect(srv)
        near = b"X-Near: " + b"n" * 15 * 1024 + b"\r\n"
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(90))
        big = b"q" * 300_000  # one large read holding a head and a body: not a head over the cap
        writer.write(post("/echo", b"a", near.decode()) + post("/echo", big, headers.decode()))
        assert (await read_reply(reader)).body == b"a"
        assert (await read_reply(reader)).body == big
        writer.close()


async def test_header_caps_come_from_the_config() -> None:
    from portway.config import ServerConfig

    factory = protocol_factory(ServerConfig(max_header_bytes=2048, max_header_count=10, read_timeout=1))
    async with serve(limits=factory.keywords["limits"]) as srv:
        reader, writer = await connect(srv)
        writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 3000 + b"\r\n\r\n")
        assert (await read_reply(reader)).status == 431
        writer.close()


# -- 16: the connection limit (uvicorn's limit_concurrency) -----------------------------------------------


async def test_connections_past_limit_concurrency_get_a_fast_503_and_a_close() -> None:
    async with serve(limit_concurrency=3) as srv:  # as uvicorn: refused once 3 are open, this one included
        held = [await connect(srv) for _ in range(2)]
        for reader, writer in held:
            writer.write(post("/echo", b"ok"))
            assert (await read_reply(reader)).status == 200
        reader, writer = await connect(srv)
        writer.write(post("/echo", b"refused"))
        reply = await read_reply(reader)
        assert reply.status == 503 and reply.headers["retry-after"] == "1" and not reply.keep_alive
        assert orjson.loads(reply.body)["error"]["code"] == "server_overloaded"
        assert await closed(reader)
        writer.close()
        held_writer = held.pop()[1]
        held_writer.close()
        await held_writer.wait_closed()
        for _ in range(100):  # the server notices the close
            if len(srv.server_state.connections) < 2:
                break
            await asyncio.sleep(0.01)
        reader, writer = await connect(srv)
        writer.write(post("/echo", b"room again"))
        assert (await read_reply(reader)).body == b"room again"
        writer.close()
        held[0][1].close()
