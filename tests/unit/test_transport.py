"""The upstream HTTP/1.1 client (transport + http1) against a raw TCP server that answers with exact bytes.

A real socket server on 127.0.0.1: each test scripts the bytes of each answer, so framing (length, chunked,
until close), keep-alive reuse, broken and malformed answers, compression and timeouts are all exercised
the way an upstream would produce them.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portway.http.client import Transport, WireRequest
from portway.http.errors import ConnectError, LocalProtocolError, ProtocolError, ReadError, ReadTimeout


@dataclass
class RawServer:
    """Answers each request with the next scripted handler; records request heads and connections."""

    handlers: list[Callable[..., object]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                handler = self.handlers.pop(0)
                keep = await handler(reader, writer)  # type: ignore[misc]
                if not keep:
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions?x=1"


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    raw = RawServer()
    srv = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    raw.port = srv.sockets[0].getsockname()[1]
    yield raw
    srv.close()


def answer(data: bytes, *, keep: bool = True) -> Callable[..., object]:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return handler


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def req(server: RawServer, body: bytes = b'{"a":1}', **headers: str) -> WireRequest:
    return WireRequest("POST", server.url, {"Content-Type": "application/json", **headers}, body)


async def test_content_length_answer_and_connection_reuse(server: RawServer) -> None:
    server.handlers += [answer(ok(b"first", "X-Thing: 1\r\n")), answer(ok(b"second"))]
    t = Transport()
    async with await t.send(req(server, Authorization="Bearer k")) as r:
        assert (r.status, r.headers.get("x-thing"), r.headers.get("X-THING")) == (200, "1", "1")
        assert await r.read() == b"first"
    async with await t.send(req(server)) as r:
        assert await r.read() == b"second"
    assert server.connections == 1  # keep-alive: the second request reused the first connection
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head and "Authorization: Bearer k\r\n" in head
    assert "Content-Length: 7\r\n" in head and server.bodies[0] == b'{"a":1}'
    await t.aclose()


async def test_chunked_answer_arrives_chunk_by_chunk(server: RawServer) -> None:
    release = asyncio.Event()

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        return True

    server.handlers.append(handler)
    t = Transport()
    r = await t.send(req(server))
    assert await r.readany() == b"hello"  # the first chunk is handed over before the rest exists
    release.set()
    assert await r.read() == b" world"
    r.release()
    await t.aclose()


async def test_body_without_framing_ends_when_the_upstream_closes(server: RawServer) -> None:
    server.handlers += [answer(b"HTTP/1.1 200 OK\r\n\r\nuntil close", keep=False), answer(ok(b"new"))]
    t = Transport()
    async with await t.send(req(server)) as r:
        assert await r.read() == b"until close"
    async with await t.send(req(server)) as r:  # that connection is gone: a new one serves
        assert await r.read() == b"new"
    assert server.connections == 2
    await t.aclose()


async def test_connection_close_answer_is_not_reused(server: RawServer) -> None:
    server.handlers += [answer(ok(b"a", "Connection: close\r\n"), keep=False), answer(ok(b"b"))]
    t = Transport()
    for expected in (b"a", b"b"):
        async with await t.send(req(server)) as r:
            assert await r.read() == expected
    assert server.connections == 2
    await t.aclose()


async def test_idle_connection_closed_by_upstream_is_not_used_again(server: RawServer) -> None:
    server.handlers += [answer(ok(b"a"), keep=False), answer(ok(b"b"))]  # server closes after answering
    t = Transport()
    async with await t.send(req(server)) as r:
        assert await r.read() == b"a"
    await asyncio.sleep(0.05)  # the FIN arrives while the connection sits in the pool
    async with await t.send(req(server)) as r:
        assert await r.read() == b"b"
    await t.aclose()


async def test_partly_read_answer_closes_its_connection(server: RawServer) -> None:
    server.handlers += [answer(ok(b"x" * 10)[:-5], keep=True), answer(ok(b"b"))]
    t = Transport()
    r = await t.send(req(server))
    r.release()  # body not read to its end: the connection cannot carry another answer
    async with await t.send(req(server)) as r:
        assert await r.read() == b"b"
    assert server.connections == 2
    await t.aclose()


async def test_upstream_dies_mid_body_is_connection_failed(server: RawServer) -> None:
    server.handlers.append(answer(ok(b"x" * 100)[:-50], keep=False))
    t = Transport()
    r = await t.send(req(server))
    with pytest.raises(ReadError):
        await r.read()
    r.close()
    await t.aclose()


async def test_upstream_closes_before_answering_is_connection_failed(server: RawServer) -> None:
    server.handlers.append(answer(b"", keep=False))
    t = Transport()
    with pytest.raises(ReadError):
        await t.send(req(server))
    await t.aclose()


async def test_garbage_is_protocol_error(server: RawServer) -> None:
    server.handlers.append(answer(b"this is not http\r\n\r\n", keep=False))
    t = Transport()
    with pytest.raises(ProtocolError):
        await t.send(req(server))
    await t.aclose()


async def test_refused_connection_is_connection_failed() -> None:
    t = Transport()
    with pytest.raises(ConnectError):
        await t.send(WireRequest("POST", "http://127.0.0.1:1/v1", {}, b""))


async def test_gzip_answer_is_decompressed(server: RawServer) -> None:
    body = gzip.compress(b'{"ok": true}' * 50)
    server.handlers.append(answer(ok(body, "Content-Encoding: gzip\r\n")))
    t = Transport()
    async with await t.send(req(server)) as r:
        assert await r.read() == b'{"ok": true}' * 50
    await t.aclose()


async def test_interim_100_continue_is_skipped(server: RawServer) -> None:
    server.handlers.append(answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real", "X-A: b\r\n")))
    t = Transport()
    async with await t.send(req(server)) as r:
        assert (r.status, r.headers.get("x-a"), await r.read()) == (200, "b", b"real")
    await t.aclose()


async def test_read_timeout_fires_on_a_stalled_stream_not_on_a_slow_reader(server: RawServer) -> None:
    async def stalls(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            writer.write(b"1\r\na\r\n")
            await writer.drain()
            await asyncio.sleep(0.04)  # steady, each gap under the idle timeout
        await asyncio.sleep(5)  # then nothing
        return False

    server.handlers.append(stalls)
    t = Transport()
    r = await t.send(req(server), read_timeout=0.3)
    await asyncio.sleep(0.5)  # a slow reader: data waits in the buffer, which is not an idle upstream
    got = b""
    with pytest.raises(ReadTimeout):
        while chunk := await r.readany():
            got += chunk
    assert got == b"a" * 5
    r.close()
    await t.aclose()


async def test_timeout_bounds_the_whole_answer(server: RawServer) -> None:
    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def head_then_stall(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    server.handlers += [silent, head_then_stall]
    t = Transport()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReadTimeout):
        await t.send(req(server), timeout=0.3)  # no status line at all
    assert 0.25 < loop.time() - started < 2
    started = loop.time()
    r = await t.send(req(server), timeout=0.3)
    with pytest.raises(ReadTimeout):
        await r.read()  # headers came, the body stalls: the same deadline still holds
    assert 0.25 < loop.time() - started < 2
    r.close()
    await t.aclose()


async def test_cleared_deadline_leaves_only_the_idle_timeout(server: RawServer) -> None:
    async def slow_stream(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        for _ in range(4):
            await writer.drain()
            await asyncio.sleep(0.15)  # the stream outlives the deadline, each gap under the idle timeout
            writer.write(b"1\r\nb\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    server.handlers.append(slow_stream)
    t = Transport()
    r = await t.send(req(server), timeout=0.2, read_timeout=0.5)
    assert await r.readany() == b"a"
    r.clear_deadline()  # committed: from here on only gaps count
    assert await r.read() == b"bbbb"
    r.release()
    await t.aclose()


async def test_header_values_cannot_inject_lines(server: RawServer) -> None:
    t = Transport()
    with pytest.raises(LocalProtocolError):
        await t.send(req(server, Authorization="Bearer k\r\nX-Evil: 1"))
    assert server.heads == []


async def test_released_before_the_closing_chunk_the_connection_is_still_reused(server: RawServer) -> None:
    async def trailing_end(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[END]\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    server.handlers += [trailing_end, answer(ok(b"b"))]
    t = Transport()
    r = await t.send(req(server))
    assert await r.readany() == b"[END]"
    r.release()  # like a stream that saw its last event: the body's end is still on the way
    await asyncio.sleep(0.2)
    async with await t.send(req(server)) as r:
        assert await r.read() == b"b"
    assert server.connections == 1
    await t.aclose()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl is on every machine this runs on)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
    ]
    argv += ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key


async def test_https_upstream_verified_against_its_ca(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    raw = RawServer(handlers=[answer(ok(b"secure")), answer(ok(b"again"))])
    srv = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    url = f"https://localhost:{port}/v1/chat/completions"
    try:
        with pytest.raises(ConnectError):  # the system CAs do not know this certificate
            await Transport().send(WireRequest("POST", url, {}, b"{}"))
        t = Transport(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for expected in (b"secure", b"again"):
            async with await t.send(WireRequest("POST", url, {}, b"{}")) as r:
                assert await r.read() == expected
        assert b"Host: localhost:" in raw.heads[-1]
        await t.aclose()
    finally:
        srv.close()
