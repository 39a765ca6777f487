"""What operators need from the upstream client (issue 11, defect 23): a connection cap per origin with a
bounded wait, a connect timeout, TLS options per provider, and HTTPS_PROXY / HTTP_PROXY / NO_PROXY.

The proxy is a tiny real CONNECT proxy written here (asyncio); the TLS upstream uses a self-signed
certificate made with openssl, as in test_transport.py.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portway.http.client import TLSOptions, Transport, WireRequest, _bypass
from portway.http.errors import ConnectError, ConnectTimeout, PoolTimeout
from tests.fakes.raw_upstream import RawUpstream, answer, ok, raw_upstream, silent

pytestmark = pytest.mark.timeout(30)
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def wire(url: str, tls: TLSOptions | None = None) -> WireRequest:
    return WireRequest("POST", url, {"Content-Type": "application/json"}, b"{}", tls)


# -- the connection cap --------------------------------------------------------------------------------


async def test_connections_per_origin_are_capped_and_the_excess_waits() -> None:
    async with raw_upstream() as up:
        up.handlers += [answer(ok(b"%d" % i)) for i in range(6)]
        t = Transport(max_connections=2, pool_timeout=5)

        async def one() -> bytes:
            async with await t.send(wire(up.url)) as r:
                await asyncio.sleep(0.02)
                return await r.read()

        got = await asyncio.gather(*(one() for _ in range(6)))
        assert sorted(got) == [b"%d" % i for i in range(6)]
        assert up.peak_connections <= 2
        await t.aclose()


async def test_a_full_pool_answers_pool_timeout_within_the_pool_timeout() -> None:
    async with raw_upstream() as up:
        up.handlers += [silent(5), silent(5)]
        t = Transport(max_connections=2, pool_timeout=0.2)
        hung = [asyncio.create_task(t.send(wire(up.url), timeout=5)) for _ in range(2)]
        async with asyncio.timeout(2):
            while len(up.heads) < 2:  # noqa: ASYNC110  (both connections taken, both requests sent)
                await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PoolTimeout):
            await t.send(wire(up.url), timeout=5)
        assert 0.15 < loop.time() - started < 1
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        await asyncio.sleep(0.05)
        up.handlers.append(answer(ok(b"free again")))  # cancelled requests gave their slots back
        async with await t.send(wire(up.url), timeout=5) as r:
            assert await r.read() == b"free again"
        await t.aclose()


# -- TLS and the connect timeout ---------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
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


@pytest.fixture
async def tls_up(certificate: tuple[Path, Path]) -> AsyncIterator[RawUpstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    async with raw_upstream(ctx, host="localhost") as up:
        yield up


async def test_tls_options_per_provider(tls_up: RawUpstream, certificate: tuple[Path, Path]) -> None:
    tls_up.handlers += [answer(ok(b"pinned")), answer(ok(b"unverified"))]
    t = Transport()
    with pytest.raises(ConnectError):  # the default: system CAs, which do not know this certificate
        await t.send(wire(tls_up.url))
    pinned, insecure = TLSOptions(ca_file=str(certificate[0])), TLSOptions(verify=False)
    async with await t.send(wire(tls_up.url, pinned)) as r:
        assert await r.read() == b"pinned"
    async with await t.send(wire(tls_up.url, insecure)) as r:
        assert await r.read() == b"unverified"
    assert t.tls_context(pinned) is t.tls_context(TLSOptions(ca_file=str(certificate[0])))  # made once
    assert tls_up.connections == 2  # the verified and the unverified pool never share a connection
    with pytest.raises(ValueError):
        t.tls_context(TLSOptions(ca_file="/nonexistent.pem"))
    await t.aclose()


async def test_connect_timeout_covers_a_handshake_that_never_ends() -> None:
    async with raw_upstream() as up:  # plain TCP that never answers the TLS hello
        t = Transport(connect_timeout=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectTimeout):
            await t.send(wire(f"https://127.0.0.1:{up.port}/v1"), timeout=5)
        assert loop.time() - started < 1


# -- proxies -----------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A tiny HTTP proxy: CONNECT tunnels to the target; an absolute-form request it answers itself."""

    lines: list[bytes] = field(default_factory=list)
    auth: list[bytes | None] = field(default_factory=list)
    port: int = 0
    refuse: bool = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *headers = head.split(b"\r\n")
        self.lines.append(line)
        found = [
            h.split(b":", 1)[1].strip() for h in headers if h.lower().startswith(b"proxy-authorization:")
        ]
        self.auth.append(found[0] if found else None)
        if self.refuse:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if not line.startswith(b"CONNECT "):
            await reader.readexactly(2)  # our body: b"{}"
            writer.write(ok(b"from the proxy"))
            await writer.drain()
            writer.close()
            return
        port = line.split()[1].rsplit(b":", 1)[1]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy()
    srv = await asyncio.start_server(p.serve, "127.0.0.1", 0)
    p.port = srv.sockets[0].getsockname()[1]
    yield p
    srv.close()


async def test_https_goes_through_a_connect_tunnel_with_credentials(
    proxy: Proxy, tls_up: RawUpstream, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s%40cret@127.0.0.1:{proxy.port}")
    tls_up.handlers += [answer(ok(b"tunnelled")), answer(ok(b"again"))]
    t = Transport()
    tls = TLSOptions(ca_file=str(certificate[0]))  # TLS inside the tunnel, checked against "localhost"
    for expected in (b"tunnelled", b"again"):
        async with await t.send(wire(tls_up.url, tls)) as r:
            assert await r.read() == expected
    assert proxy.lines == [f"CONNECT localhost:{tls_up.port} HTTP/1.1".encode()]  # one tunnel, reused
    assert proxy.auth == [b"Basic " + base64.b64encode(b"alice:s@cret")]
    assert b"Host: localhost:" in tls_up.heads[0] and b"roxy-Authorization" not in tls_up.heads[0]
    await t.aclose()


async def test_http_goes_to_the_proxy_in_absolute_form(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://bob:pw@127.0.0.1:{proxy.port}")
    t = Transport()
    async with await t.send(wire("http://upstream.example:8080/v1/chat/completions")) as r:
        assert await r.read() == b"from the proxy"
    assert proxy.lines == [b"POST http://upstream.example:8080/v1/chat/completions HTTP/1.1"]
    assert proxy.auth == [b"Basic " + base64.b64encode(b"bob:pw")]
    await t.aclose()


async def test_no_proxy_hosts_are_reached_directly(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "example.org, 127.0.0.1")
    async with raw_upstream() as up:
        up.handlers.append(answer(ok(b"direct")))
        t = Transport()
        async with await t.send(wire(up.url)) as r:
            assert await r.read() == b"direct"
        assert proxy.lines == []
        await t.aclose()


def test_no_proxy_matching_is_like_urllib() -> None:
    assert _bypass("api.example.com", 443, "example.com")  # domain and its subdomains
    assert _bypass("api.example.com", 443, ".example.com")  # a leading dot: the same
    assert _bypass("example.com", 443, "example.com")
    assert not _bypass("notexample.com", 443, "example.com")  # a suffix only at a label boundary
    assert _bypass("anything", 80, "*")
    assert _bypass("host", 8080, "host:8080") and not _bypass("host", 8081, "host:8080")
    assert _bypass("10.1.2.3", 80, "10.0.0.0/8") and not _bypass("11.1.2.3", 80, "10.0.0.0/8")
    assert not _bypass("example.com", 443, None) and not _bypass("example.com", 443, "")


async def test_proxy_credentials_never_appear_in_errors(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.refuse = True
    monkeypatch.setenv("HTTPS_PROXY", f"http://carol:topsecret@127.0.0.1:{proxy.port}")
    t = Transport()
    with pytest.raises(ConnectError) as refused:
        await t.send(wire("https://upstream.example/v1"))
    monkeypatch.setenv("HTTPS_PROXY", "http://carol:topsecret@127.0.0.1:1")  # nothing listens there
    with pytest.raises(ConnectError) as unreachable:
        await Transport().send(wire("https://upstream.example/v1"))
    for info in (refused, unreachable):
        assert "topsecret" not in str(info.value) and "carol" not in str(info.value)
    assert "407" in str(refused.value)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://carol:topsecret@127.0.0.1:1080")
    with pytest.raises(ValueError) as unsupported:
        Transport()
    assert "topsecret" not in str(unsupported.value)
