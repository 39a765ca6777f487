"""Request bodies written from files (`StreamedBody`): exact bytes, backpressure, early answers, reuse.

A raw asyncio server on 127.0.0.1 reads the request as a real upstream would (head, then Content-Length
bytes), at the pace each test sets, so the client's write side is exercised over a real socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portway.http import client
from portway.http.client import FilePart, StreamedBody, Transport, WireRequest
from portway.http.connection import FILE_CHUNK, Connection
from portway.http.errors import TransportError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


@dataclass
class Server:
    handlers: list[Handler] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    digests: list[tuple[int, str]] = field(default_factory=list)  # (bytes read, sha256) per body
    connections: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.handlers:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if not await self.handlers.pop(0)(reader, writer, length):
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/audio/transcriptions"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.serve, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    yield srv
    listener.close()


def reads_body(srv: Server, *, pause: float = 0.0) -> Handler:
    """Reads the whole body (after `pause` seconds of not reading at all), hashes it, answers 200."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> bool:
        await asyncio.sleep(pause)
        digest, left = hashlib.sha256(), length
        while left:
            chunk = await reader.read(min(left, 65536))
            if not chunk:
                return False
            digest.update(chunk)
            left -= len(chunk)
        srv.digests.append((length, digest.hexdigest()))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    return handler


def write_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def request(srv: Server, body: StreamedBody) -> WireRequest:
    return WireRequest("POST", srv.url, {"Content-Type": "multipart/form-data; boundary=b"}, body)


async def test_parts_arrive_in_order_with_their_summed_length_and_the_connection_is_reused(
    server: Server, tmp_path: Path
) -> None:
    data = os.urandom(3 * FILE_CHUNK + 17)  # several chunks and a tail
    (tmp_path / "a.bin").write_bytes(data)
    body = StreamedBody([b"--b\r\nhead\r\n\r\n", FilePart(tmp_path / "a.bin", len(data)), b"\r\n--b--\r\n"])
    expected = b"--b\r\nhead\r\n\r\n" + data + b"\r\n--b--\r\n"
    server.handlers += [reads_body(server), reads_body(server)]
    t = Transport()
    for _ in range(2):  # the same body object sends again (a retry reads the file anew)
        async with await t.send(request(server, body), timeout=10) as r:
            assert (r.status, await r.read()) == (200, b"ok")
    assert f"Content-Length: {len(expected)}\r\n".encode() in server.heads[0]
    assert server.digests == [(len(expected), hashlib.sha256(expected).hexdigest())] * 2
    assert server.connections == 1  # sent whole and answered: the connection went back to the pool
    await t.aclose()


async def test_a_large_file_is_written_as_the_socket_drains_not_buffered_whole(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 24 * 1024 * 1024
    digest = write_file(tmp_path / "big.bin", size)
    made: list[Connection] = []

    class Recorded(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(self)
            super().connection_made(transport)

    monkeypatch.setattr(client, "Connection", Recorded)
    server.handlers.append(reads_body(server, pause=0.5))  # the upstream does not read for a while
    t = Transport()
    task = asyncio.create_task(t.send(request(server, StreamedBody([FilePart(tmp_path / "big.bin", size)]))))
    peak = 0
    while not task.done():  # sample the client's own write buffer while the upstream is not reading
        for conn in made:
            if conn.transport is not None and not conn.closed:
                peak = max(peak, conn.transport.get_write_buffer_size())
        await asyncio.sleep(0.005)
    async with await task as r:
        assert await r.read() == b"ok"
    assert server.digests == [(size, digest)]
    # Without backpressure the buffer would hold what the kernel did not take: most of the 24 MiB.
    assert 0 < peak <= FILE_CHUNK + 64 * 1024, peak
    await t.aclose()


async def test_an_early_answer_is_read_and_the_half_sent_connection_is_not_reused(
    server: Server, tmp_path: Path
) -> None:
    size = 16 * 1024 * 1024
    write_file(tmp_path / "big.bin", size)

    async def too_large(_: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int) -> bool:
        body = b'{"error":{"message":"too large"}}'
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(1.0)  # keeps the connection open without reading the body
        return False

    server.handlers += [too_large, reads_body(server)]
    t = Transport()
    async with await t.send(
        request(server, StreamedBody([FilePart(tmp_path / "big.bin", size)])), timeout=5
    ) as r:
        assert r.status == 413
        assert b"too large" in await r.read()
    async with await t.send(request(server, StreamedBody([b"small"])), timeout=5) as r:
        assert await r.read() == b"ok"
    assert server.connections == 2  # the first connection was mid-body: closed, never reused
    await t.aclose()


async def test_a_file_shorter_than_declared_fails_the_request(server: Server, tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(b"x" * 10)
    server.handlers.append(reads_body(server))
    t = Transport()
    with pytest.raises(TransportError, match="could not be read"):
        await t.send(request(server, StreamedBody([FilePart(tmp_path / "short.bin", 100)])), timeout=5)
    await t.aclose()


async def test_a_missing_file_fails_the_request(server: Server, tmp_path: Path) -> None:
    server.handlers.append(reads_body(server))
    t = Transport()
    with pytest.raises(TransportError, match="could not be read"):
        await t.send(request(server, StreamedBody([FilePart(tmp_path / "gone.bin", 5)])), timeout=5)
    await t.aclose()
