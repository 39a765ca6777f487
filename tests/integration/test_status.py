"""GET /v1/status and GET /admin/status on a real portway process, against the real fake upstream: probes
every second, failures driven through real traffic, uptime rows in the real SQLite file; and the uptime
store on PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from portway.services.status import fingerprint
from portway.stores.sql.database import Database
from portway.stores.sql.status import Check, StatusStore
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

OK_KEY = "sk-status-ok-7f3a9c2e1b5d"
BRK_KEY = "sk-status-brk-4e8b0a6c2d1f"
BAD_KEY = "bad-status-key-9d7c5b3a"  # the fake upstream answers 401 to keys starting with "bad"
GONE_KEY = "sk-status-gone-1a2b3c4d5e"
KEYS = (OK_KEY, BRK_KEY, BAD_KEY, GONE_KEY)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there: connections are refused


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    def prov(key: str, base: str = upstream.base_url) -> dict[str, Any]:
        return {"type": "openai", "base_url": base, "api_keys": [key]}

    config = {
        "routing": {
            "deadline": 4,
            "backoff_base": 0.01,
            "backoff_max": 0.02,
            "breaker_threshold": 2,
            "breaker_cooldown": 120,
        },
        "status": {"probe_interval_seconds": 1, "probe_timeout": 1, "window": 300},
        "providers": {
            "okp": prov(OK_KEY),
            "brk": prov(BRK_KEY),
            "rej": prov(BAD_KEY),
            "gone": prov(GONE_KEY, f"http://127.0.0.1:{_closed_port()}/v1"),
        },
        "models": {"good": ["okp/fake-model"]},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("status"), config)
    yield proc
    proc.stop()


def _get(gw: PortwayProcess, path: str, key: str | None = None) -> httpx.Response:
    headers = gw.headers(key) if key else {}
    return HTTP.get(gw.url + path, headers=headers, timeout=10)


def _until(fetch: Callable[[], dict[str, Any]], ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll until the condition holds (probes run each second); fail with the last answer if it never does."""
    deadline = time.monotonic() + 15
    while True:
        body = fetch()
        if ok(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def _by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["provider"]: p for p in body["providers"]}


def _summary(gw: PortwayProcess) -> dict[str, Any]:
    resp = _get(gw, "/v1/status")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _detail(gw: PortwayProcess) -> dict[str, Any]:
    resp = _get(gw, "/admin/status", gw.master_key)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_public_summary_from_probes(gw: PortwayProcess) -> None:
    body = _until(
        lambda: _summary(gw),
        lambda b: (
            _by_name(b)["okp"]["uptime"]["1h"] is not None
            and _by_name(b)["gone"]["status"] == "down"
            and _by_name(b)["rej"]["status"] == "down"
        ),
    )
    assert body["object"] == "status" and body["status"] == "degraded"  # some providers down, not all
    providers = _by_name(body)
    assert sorted(providers) == ["brk", "gone", "okp", "rej"]
    okp = providers["okp"]
    assert set(okp) == {"provider", "status", "uptime", "last_checked", "latency_ms_p50"}
    assert (
        okp["status"] == "up" and okp["uptime"]["1h"] == 100.0 and set(okp["uptime"]) == {"1h", "24h", "7d"}
    )
    assert okp["last_checked"].endswith("Z") and okp["latency_ms_p50"] is not None
    assert providers["gone"]["uptime"]["1h"] == 0.0  # refused connections: every check down


def test_uptime_rows_are_in_the_database(gw: PortwayProcess) -> None:
    _until(lambda: _summary(gw), lambda b: _by_name(b)["okp"]["uptime"]["1h"] is not None)
    with sqlite3.connect(gw.data_dir / "portway.db") as con:
        rows = con.execute("SELECT provider, status, source FROM provider_status").fetchall()
    assert ("okp", "up", "probe") in rows and ("gone", "down", "probe") in rows


def test_failing_traffic_opens_the_breaker_and_shows_in_detail(gw: PortwayProcess) -> None:
    resp = HTTP.post(
        gw.base_url + "/chat/completions",
        headers=gw.headers(),
        json={"model": "brk/fake-model@500", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert resp.status_code >= 500
    detail = _detail(gw)
    brk = _by_name(detail)["brk"]
    assert brk["status"] == "down"  # its only key's breaker is open, whatever the probe says
    (key,) = brk["keys"]
    assert key["label"] == "brk#1" and key["fingerprint"] == fingerprint(BRK_KEY)
    assert key["breaker"] == "open" and key["in_flight"] == 0 and key["set_aside"] is False
    (model,) = brk["models"]
    assert model["model"] == "fake-model@500" and model["success_rate"] == 0.0
    assert model["last_error"]["kind"] == "server" and model["last_error"]["status"] == 500
    assert brk["probe"]["enabled"] is True and brk["probe"]["interval_seconds"] == 1
    assert _by_name(_summary(gw))["brk"]["status"] == "down"


def test_successful_traffic_gives_latency_and_rate(gw: PortwayProcess) -> None:
    resp = HTTP.post(
        gw.base_url + "/chat/completions",
        headers=gw.headers(),
        json={"model": "good", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    okp = _by_name(_detail(gw))["okp"]
    assert okp["status"] == "up" and okp["success_rate"] == 1.0 and okp["latency_ms_p95"] is not None
    assert okp["keys"][0]["breaker"] == "closed" and okp["keys"][0]["requests"] >= 1


def test_rejected_key_is_set_aside(gw: PortwayProcess) -> None:
    resp = HTTP.post(
        gw.base_url + "/chat/completions",
        headers=gw.headers(),
        json={"model": "rej/fake-model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert resp.status_code >= 500
    rej = _by_name(_detail(gw))["rej"]
    assert rej["status"] == "down" and rej["keys"][0]["set_aside"] is True
    assert rej["keys"][0]["recheck_at"] is not None and rej["last_error"]["kind"] == "auth"
    assert rej["probe"]["last"]["ok"] is False and rej["probe"]["last"]["status"] == 401


def test_admin_status_needs_the_admin(gw: PortwayProcess) -> None:
    assert _get(gw, "/admin/status").status_code == 401
    assert _get(gw, "/admin/status", "sk-pw-not-a-key").status_code == 401
    assert _get(gw, "/v1/status").status_code == 200  # public summary


def test_no_secret_or_url_in_either_answer(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    _until(lambda: _summary(gw), lambda b: _by_name(b)["rej"]["status"] == "down")
    summary = _get(gw, "/v1/status").text
    detail = _get(gw, "/admin/status", gw.master_key).text
    for key in KEYS:
        for text in (summary, detail):
            assert key not in text and key[:8] not in text
    assert "127.0.0.1" not in summary and "127.0.0.1" not in detail
    assert fingerprint(OK_KEY) not in summary  # fingerprints are for admins only
    assert fingerprint(OK_KEY) in detail


@pytest.mark.postgres
def test_store_on_postgres(pg_url: str) -> None:
    async def run() -> None:
        db = Database(pg_url)
        await db.migrate()
        store = StatusStore(db.engine)
        now = time.time()
        slot = int(now // 60 * 60)
        await store.record(
            [Check("a", slot, now, "up", "probe", 12.0), Check("b", slot, now, "down", "probe")]
        )
        await store.record([Check("a", slot, now, "down", "traffic")])  # the slot is taken: kept as it was
        await store.record([Check("a", slot - 7200, now - 7200, "down", "probe")])
        assert await store.taken(slot, ["a", "b", "c"]) == {"a", "b"}
        uptime = await store.uptime(now)
        assert uptime["a"].percent == {"1h": 100.0, "24h": 50.0, "7d": 50.0}
        assert uptime["b"].percent["1h"] == 0.0 and uptime["a"].last_checked == pytest.approx(now)
        assert await store.prune(now - 3600) == 1
        await db.aclose()

    asyncio.run(run())


def test_store_on_sqlite(tmp_path: Path) -> None:
    async def run() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
        await db.migrate()
        store = StatusStore(db.engine)
        now = time.time()
        await store.record([Check("a", 60, now, "degraded", "traffic"), Check("a", 60, now, "down", "probe")])
        assert (await store.uptime(now))["a"].percent["1h"] == 100.0  # degraded still serves
        await db.aclose()

    asyncio.run(run())
