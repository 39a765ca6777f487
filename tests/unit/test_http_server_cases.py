"""uvicorn's own protocol test cases (tests/protocols/test_http.py in encode/uvicorn), asked of portway's
protocol over raw sockets against a real server: what an ASGI server owes an app and a client. Where
portway answers differently on purpose (JSON error bodies, a 500 for an invalid response header) the case
checks what both must do: no smuggled bytes, the connection closed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httptools

from tests.unit.test_http_server import closed, post, read_reply
from tests.unit.test_http_server_limits import connect, serve

GET = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


async def read_bodies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The bodies of the next `count` responses, however they are split across reads."""
    bodies: list[bytes] = []
    done: list[bool] = []

    class Collect:
        def on_message_begin(self) -> None:
            bodies.append(b"")

        def on_body(self, body: bytes) -> None:
            bodies[-1] += body

        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(Collect())
    while len(done) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "closed early"
        parser.feed_data(data)
    return bodies


def hello() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"12")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"Hello, world"})

    return app


async def test_headers_given_as_an_iterator() -> None:
    def pairs() -> Iterator[tuple[bytes, bytes]]:
        yield (b"x-test-header", b"test value")
        yield (b"content-length", b"12")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        which = scope["path"]
        headers = pairs() if which == "/gen" else iter([(b"x-test-header", b"test value")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"Hello, world" if which == "/gen" else b""})

    async with serve(app) as srv:
        reader, writer = await connect(srv)
        for path in (b"/iter", b"/gen"):
            writer.write(GET.replace(b"/", path, 1))
            reply = await read_reply(reader)
            assert reply.status == 200 and reply.headers["x-test-header"] == "test value"
        assert reply.body == b"Hello, world"
        writer.close()


async def test_an_app_that_returns_a_value_loses_its_connection() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> int:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return 123

    async with serve(app) as srv:
        reader, writer = await connect(srv)
        writer.write(GET)
        assert (await read_reply(reader)).status == 200
        assert await closed(reader)
        writer.close()


async def test_pipelined_requests_are_each_answered_in_order() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": body})

    async with serve(app) as srv:
        reader, writer = await connect(srv)
        writer.write(b"".join(GET.replace(b"/", b"/%d" % i, 1) for i in range(1, 4)))  # one write
        assert await read_bodies(reader, 3) == [b"/1", b"/2", b"/3"]
        for i in range(4, 7):  # three writes before any answer is read
            writer.write(GET.replace(b"/", b"/%d" % i, 1))
        assert await read_bodies(reader, 3) == [b"/4", b"/5", b"/6"]
        writer.close()


async def test_connection_close_then_another_request_gets_one_real_answer() -> None:
    async with serve(hello()) as srv:
        reader, writer = await connect(srv)
        writer.write(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + GET)
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"HTTP/1.1 ") == 1
        assert b"content-length: 12" in data and b"connection: close" in data.lower()
        writer.close()


async def test_max_concurrency_answers_503_and_closes() -> None:
    async with serve(hello(), limit_concurrency=1) as srv:
        reader, writer = await connect(srv)
        writer.write(GET)
        reply = await read_reply(reader)
        assert reply.status == 503 and reply.headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_early_response_then_the_rest_of_the_body_keeps_the_connection() -> None:
    async with serve(hello()) as srv:
        reader, writer = await connect(srv)
        writer.write(post("/", b"").replace(b"Content-Length: 0", b"Content-Length: 18"))
        assert (await read_reply(reader)).status == 200
        writer.write(b'{"hello": "world"}' + GET)
        assert (await read_reply(reader)).body == b"Hello, world"
        writer.close()


async def test_receive_after_the_response_is_a_disconnect() -> None:
    after: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await hello()(scope, receive, send)
        after.append(await receive())

    async with serve(app) as srv:
        reader, writer = await connect(srv)
        writer.write(post("/", b'{"hello": "world"}'))
        assert (await read_reply(reader)).status == 200
        for _ in range(100):
            if after:
                break
            await asyncio.sleep(0.01)
        assert after == [{"type": "http.disconnect"}]
        writer.close()


async def broken_app(scope: Any, receive: Any, send: Any) -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
    case = scope["path"]
    if case == "/none":
        return
    if case == "/missing-start":
        await send({"type": "http.response.body", "body": b""})
    elif case == "/partial":
        await send(start)
    elif case == "/duplicate-start":
        await send(start)
        await send(start)
    elif case == "/after-complete":
        await send(start)
        await send({"type": "http.response.body", "body": b"abc"})
        await send({"type": "http.response.body", "body": b""})
    elif case == "/undersized":
        await send(start)
        await send({"type": "http.response.body", "body": b"a"})
    elif case == "/oversized":
        await send(start)
        await send({"type": "http.response.body", "body": b"abcdef"})
    elif case == "/split":
        headers = [(b"key", b"value\r\nCookie: smuggled=value")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def test_broken_apps_never_leave_a_reusable_connection() -> None:
    """Each case: what reaches the client first, then the connection must be closed."""
    cases = {
        "/none": b"HTTP/1.1 500 ",
        "/missing-start": b"HTTP/1.1 500 ",
        "/partial": b"",  # no head was sent: nothing to complete it with
        "/duplicate-start": b"",
        "/after-complete": b"HTTP/1.1 200 OK",
        "/undersized": b"HTTP/1.1 200 OK",
        "/oversized": b"",
        "/split": b"HTTP/1.1 500 ",  # portway refuses the head with a 500; uvicorn sends nothing
    }
    async with serve(broken_app) as srv:
        for path, first in cases.items():
            reader, writer = await connect(srv)
            writer.write(GET.replace(b"/", path.encode(), 1))
            data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closes
            assert data.startswith(first), (path, data)
            assert b"smuggled" not in data
            writer.close()


async def test_100_continue_is_not_sent_when_the_body_is_not_read() -> None:
    async def no_content(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(no_content) as srv:
        reader, writer = await connect(srv)
        request = post("/", b"", "Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", b"Content-Length: 18"
        )
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204 No Content") and b"100 Continue" not in head
        writer.close()


async def test_http_1_0_root_path_and_raw_path_reach_the_scope() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        text = f"{scope['http_version']} {scope['root_path']} {scope['path']} {scope['raw_path'].decode()}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": text.encode()})

    async with serve(app, root_path="/app") as srv:
        reader, writer = await connect(srv)
        writer.write(b"GET /one%2Ftwo HTTP/1.0\r\nHost: example.org\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        assert b"\r\n\r\n" in data and b"1.0 /app /app/one/two /app/one%2Ftwo" in data
        writer.close()
