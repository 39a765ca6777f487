"""What a new user meets first, against a real `portway serve`: the start-up summary, a quiet log that still
names failed upstream attempts, /docs without internet, and per-IP limits behind a load balancer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from portway import __version__
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

MSGS = [{"role": "user", "content": "ping"}]
UPSTREAM_KEY = "k-first-hour-upstream-secret"


def _config(up: FakeUpstream, **server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "routing": {"retries_per_target": 0},
        # A daily quota, not rpm: a minute boundary between two requests must not reset the count.
        "limits": {"per_ip": {"daily_requests": 2}},
        "providers": {"up": {"type": "openai", "base_url": up.base_url, "api_keys": [UPSTREAM_KEY]}},
        "models": {"direct": ["up/fake-model"], "broken": ["up/fake-model@500"]},
    }


def _key(gw: PortwayProcess) -> str:
    r = HTTP.post(gw.url + "/admin/keys", json={"name": "first-hour"}, headers=gw.headers())
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _chat(gw: PortwayProcess, key: str, forwarded: str | None = None, model: str = "direct") -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    body = {"model": model, "messages": MSGS}
    return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=20).status_code


@pytest.fixture(scope="module")
def proxied(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    """portway behind a load balancer on 127.0.0.1 (the test client's address); a fresh interpreter, as a
    user starts it (test_start_up_prints_one_summary reads its start-up)."""
    gw = PortwayProcess(
        tmp_path_factory.mktemp("proxied"), _config(upstream, trusted_proxies=["127.0.0.1/32"]), fresh=True
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def proxied_key(proxied: PortwayProcess) -> str:
    return _key(proxied)


def test_each_forwarded_client_has_its_own_budget(proxied: PortwayProcess, proxied_key: str) -> None:
    a, b = "203.0.113.10", "203.0.113.11"
    assert [_chat(proxied, proxied_key, a) for _ in range(3)] == [200, 200, 429]
    assert [_chat(proxied, proxied_key, b) for _ in range(3)] == [200, 200, 429]


def test_a_spoofed_chain_counts_as_what_the_proxy_saw(proxied: PortwayProcess, proxied_key: str) -> None:
    real = "203.0.113.20"
    assert [_chat(proxied, proxied_key, real) for _ in range(2)] == [200, 200]
    # The client wrote the left part itself: only the rightmost untrusted hop counts.
    assert _chat(proxied, proxied_key, f"198.51.100.1, {real}") == 429
    assert _chat(proxied, proxied_key, f"198.51.100.2,{real}") == 429
    # A trusted hop at the right (a second proxy) is skipped; it does not become the client.
    assert _chat(proxied, proxied_key, f"{real}, 127.0.0.1") == 429


def test_without_a_forwarded_address_the_peer_counts(proxied: PortwayProcess, proxied_key: str) -> None:
    # No header, and a value that is not an address: both count as the proxy's own address.
    assert [_chat(proxied, proxied_key), _chat(proxied, proxied_key, "unknown")] == [200, 200]
    assert _chat(proxied, proxied_key, "garbage, also-garbage") == 429


def test_without_trusted_proxies_the_header_is_ignored(upstream: FakeUpstream, tmp_path: Path) -> None:
    gw = PortwayProcess(tmp_path, _config(upstream))
    try:
        key = _key(gw)
        codes = [_chat(gw, key, f"203.0.113.{30 + i}") for i in range(3)]
        assert codes == [200, 200, 429]  # one budget: the connection's address
    finally:
        gw.stop()


def test_start_up_prints_one_summary(proxied: PortwayProcess) -> None:
    log = proxied.log()
    assert log.count(f"portway {__version__} on {proxied.url}") == 1
    assert "providers:  up (1 key)" in log
    assert "aliases:    broken, direct" in log  # the test's YAML has its keys sorted
    assert f"database:   sqlite+aiosqlite:///{(proxied.data_dir / 'portway.db').resolve()}" in log
    assert "master key: from PORTWAY_MASTER_KEY" in log
    assert "alembic" not in log  # its INFO lines ("Context impl SQLiteImpl.", one per revision) are gone
    assert UPSTREAM_KEY not in log and proxied.master_key not in log


def test_a_failed_attempt_is_logged_without_its_key(proxied: PortwayProcess) -> None:
    assert _chat(proxied, proxied.master_key or "", model="broken") == 502
    line = (
        "WARNING portway.routing: upstream attempt failed: provider=up model=fake-model@500 key=up#1 "
        "status=500 kind=server"
    )
    log = proxied.log()
    assert line in log
    assert UPSTREAM_KEY not in log


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_need_no_internet(proxied: PortwayProcess, page: str) -> None:
    r = HTTP.get(proxied.url + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.findall(r"https?://", r.text), "the page loads something from another host"
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', r.text)
    assert any(a.endswith(".js") for a in assets)
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for asset in assets:
        got = HTTP.get(proxied.url + asset)
        assert got.status_code == 200, asset
        assert got.headers["content-type"].startswith(types[Path(asset).suffix]), asset
        assert len(got.content) > 1000, asset


def test_docs_assets_are_a_fixed_list(proxied: PortwayProcess) -> None:
    for name in ["nope.js", "..%2Fpyproject.toml", "%2E%2E%2F__init__.py"]:
        assert HTTP.get(f"{proxied.url}/docs/assets/{name}").status_code == 404


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.5", ["203.0.113.1"], "10.0.0.5"),  # an untrusted peer: its header proves nothing
        ("127.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        ("127.0.0.1", ["198.51.100.1, 203.0.113.1, 10.1.2.3"], "203.0.113.1"),  # two proxies
        ("127.0.0.1", ["198.51.100.1", "203.0.113.1"], "203.0.113.1"),  # two header lines are one list
        ("127.0.0.1", ["127.0.0.2, 10.1.2.3"], "127.0.0.2"),  # every hop trusted: the leftmost
        ("127.0.0.1", ["203.0.113.1, unknown"], "127.0.0.1"),  # nothing left of a non-address counts
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
        ("::ffff:127.0.0.1", [" ::ffff:203.0.113.9 "], "203.0.113.9"),  # IPv4-mapped is IPv4
        ("::1", ["203.0.113.1"], "::1"),  # not in the trusted list
        (None, ["203.0.113.1"], None),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], client: str | None) -> None:
    from portway.api.common import ClientAddress

    resolve = ClientAddress(["127.0.0.0/8", "10.1.0.0/16"]).resolve
    headers = [(b"host", b"x"), *((b"x-forwarded-for", v.encode()) for v in forwarded)]
    assert resolve(peer, headers) == client


def test_trusted_proxies_are_validated() -> None:
    from portway.config import ServerConfig

    assert ServerConfig(trusted_proxies=[" 10.0.0.0/8", "::1"]).trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ValueError, match=r"trusted_proxies\[1\]: 'lb.internal' is not an IP address"):
        ServerConfig(trusted_proxies=["10.0.0.1", "lb.internal"])
