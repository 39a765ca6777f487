"""portway's HTTP/1.1 server protocol, run by a real uvicorn server, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson
import pytest
import uvicorn

from portway.http.server import HttpProtocol

PROTOCOL: Any = HttpProtocol

Scope = dict[str, Any]


@dataclass
class Events:
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


async def read_body(receive: Any) -> tuple[bytes, int]:
    parts, messages = [], 0
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        messages += 1
        parts.append(message["body"])
        if not message["more_body"]:
            return b"".join(parts), messages


def make_app(events: Events) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        path = scope["path"]
        if path == "/echo":
            body, messages = await read_body(receive)
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
                (b"x-messages", str(messages).encode()),
                (b"x-method", scope["method"].encode()),
                (b"x-path", scope["path"].encode() + b"?" + scope["query_string"]),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif path == "/stream":
            await read_body(receive)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"stream")]})
            for part in (b"one", b"two", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            chunk = b"x" * 65536
            size = 160 * len(chunk)  # ~10 MB: far past the transport's write buffer
            headers = [(b"content-length", str(size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(160):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/reject":  # answers before reading the body (like a 401 or 413)
            body = b'{"error":"too big"}'
            headers = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif path == "/boom":
            raise ValueError("secret detail that must not reach the client")
        elif path == "/boom-late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise ValueError("after the response started")
        elif path == "/bad-header":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\r\nx-b: 2")]})
        elif path == "/slow":
            await asyncio.sleep(0.3)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"done"})
        elif path == "/hold":  # a stream that stays open until the client leaves
            task = asyncio.current_task()
            assert task is not None

            def leave() -> None:
                events.disconnected.set()
                task.cancel()

            scope["extensions"]["portway.on_disconnect"](leave)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.cancelled.set()
                raise
        elif path == "/head":
            headers = [(b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else b"hello"})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    return app


@dataclass
class Server:
    port: int
    events: Events
    server: uvicorn.Server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    events = Events()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        make_app(events),
        host="127.0.0.1",
        port=port,
        http=PROTOCOL,
        ws="none",
        lifespan="off",
        log_level="critical",
        timeout_keep_alive=1,
        server_header=False,
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(200):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    assert srv.started
    yield Server(port, events, srv)
    srv.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


class Reply:
    """One response read off the wire with httptools' parser."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.done = False
        self.keep_alive = True
        self._parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    reply = Reply()
    while not reply.done:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            raise ConnectionError("closed before the response was complete")
        reply.feed(data)
    return reply


async def connect(srv: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.port)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def closed(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except ConnectionResetError:
        return True


async def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    reader, writer = await connect(server)
    for i in range(5):
        writer.write(post(f"/echo?i={i}", b"hello %d" % i))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.body == b"hello %d" % i
        assert reply.headers["x-path"] == f"/echo?i={i}" and reply.headers["x-method"] == "POST"
        assert "date" in reply.headers and "server" not in reply.headers
    writer.close()


async def test_status_line_headers_and_body_leave_in_one_write(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(post("/echo", b"x" * 10))
    first = await asyncio.wait_for(reader.read(65536), 5)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n" + b"x" * 10)
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(post("/slow", b"") + post("/echo", b"second") + post("/echo", b"third"))
    replies = b""
    while replies.count(b"HTTP/1.1 200") < 3 or not replies.endswith(b"third"):
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data
        replies += data
    assert replies.index(b"done") < replies.index(b"second") < replies.index(b"third")
    writer.close()


async def test_chunked_request_body_arrives_whole(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"abc", b"defgh", b"ij"):
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()
        await asyncio.sleep(0.02)
    writer.write(b"0\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.body == b"abcdefghij" and int(reply.headers["x-messages"]) >= 2
    writer.close()


async def test_large_request_body_with_flow_control(server: Server) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, well past the buffering high-water mark
    reader, writer = await connect(server)
    writer.write(post("/echo", body))
    reply = await read_reply(reader)
    assert reply.body == body
    writer.close()


async def test_large_response_to_a_slow_reader_arrives_whole(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.3)  # let the server fill its buffers and pause
    reply = await read_reply(reader)
    assert reply.status == 200 and len(reply.body) == 160 * 65536 and set(reply.body) == {ord("x")}
    writer.close()


async def test_streamed_response_is_chunked(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(post("/stream", b""))
    reply = await read_reply(reader)
    assert reply.headers["transfer-encoding"] == "chunked" and reply.body == b"onetwothree"
    writer.write(post("/echo", b"after"))  # the connection is still good
    assert (await read_reply(reader)).body == b"after"
    writer.close()


async def test_http_1_0_gets_a_close_delimited_body_not_chunks(server: Server) -> None:
    """HTTP/1.0 has no chunked encoding: an unframed answer is sent as is and the connection closed."""
    reader, writer = await connect(server)
    writer.write(b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert body == b"onetwothree"
    writer.close()


async def test_expect_100_continue(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        post("/echo", b"", "Expect: 100-continue\r\n").replace(b"Content-Length: 0", b"Content-Length: 4")
    )
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    assert (await read_reply(reader)).body == b"body"
    writer.close()


async def test_head_has_headers_but_no_body(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n")
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"content-length: 5" in data and b"transfer-encoding" not in data
    writer.write(b"GET /head HTTP/1.1\r\nHost: t\r\n\r\n")  # no body bytes of the HEAD were left behind
    reply = await read_reply(reader)
    assert reply.status == 200 and reply.body == b"hello"
    writer.close()


async def test_answer_before_the_body_is_read_keeps_the_connection_usable(server: Server) -> None:
    reader, writer = await connect(server)
    body = b"y" * 300_000
    writer.write(post("/reject", body[:1000]).replace(b"Content-Length: 1000", b"Content-Length: 300000"))
    reply = await read_reply(reader)
    assert reply.status == 413
    writer.write(body[1000:])  # the client finishes sending; the rest is read and dropped
    writer.write(post("/echo", b"next"))
    assert (await read_reply(reader)).body == b"next"
    writer.close()


async def test_malformed_request_gets_a_json_400_and_a_close(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 400 and not reply.keep_alive
    assert orjson.loads(reply.body)["error"]["code"] == "invalid_http_request"
    assert await closed(reader)


async def test_app_failure_before_answering_is_a_json_500_without_details(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 500 and b"secret" not in reply.body
    assert orjson.loads(reply.body)["error"]["type"] == "server_error"
    assert await closed(reader)


async def test_app_failure_mid_response_closes_the_connection(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /boom-late HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        data += chunk
    assert b"partial" in data and not data.endswith(b"0\r\n\r\n")  # cut off, never a clean end


async def test_header_injection_is_refused(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /bad-header HTTP/1.1\r\nHost: t\r\n\r\n")
    reply = await read_reply(reader)
    assert reply.status == 500 and "x-b" not in reply.headers


async def test_on_disconnect_runs_when_the_client_leaves_mid_response(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    data = await asyncio.wait_for(reader.read(65536), 5)
    assert b"first" in data
    writer.close()
    await asyncio.wait_for(server.events.disconnected.wait(), 5)
    await asyncio.wait_for(server.events.cancelled.wait(), 5)


async def test_http_1_0_and_connection_close_end_the_connection(server: Server) -> None:
    for request in (
        b"GET /head HTTP/1.0\r\n\r\n",
        b"GET /head HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ):
        reader, writer = await connect(server)
        writer.write(request)
        reply = await read_reply(reader)
        assert reply.body == b"hello" and reply.headers.get("connection") == "close"
        assert await closed(reader)
        writer.close()


async def test_idle_connections_are_closed_after_the_keep_alive_timeout(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(post("/echo", b"a"))
    await read_reply(reader)
    assert await closed(reader, timeout=5)  # timeout_keep_alive=1 in the fixture
    silent_reader, silent = await connect(server)  # a connection that never sends a request
    assert await closed(silent_reader, timeout=5)
    writer.close()
    silent.close()


async def test_shutdown_lets_the_response_in_progress_finish(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.1)
    server.server.should_exit = True
    reply = await read_reply(reader)
    assert reply.body == b"done" and reply.headers.get("connection") == "close"
    writer.close()
