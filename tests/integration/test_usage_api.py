"""Usage analytics (`GET /admin/usage`, `GET /v1/usage`) on a real gateway, on SQLite and on Postgres.

The request log is seeded through the gateway's own sink (`Database.write_usage`) with rows whose sums and
percentiles are worked out by hand here, in a window of days before today that real traffic cannot reach;
a few real completions (one streamed) then check that what the gateway records is what it reports.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from portway.stores.sql.database import Database
from portway.usage.records import UsageRecord
from tests import services
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import _pg_admin, gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

DAY = 86400
BASE = (int(time.time()) // DAY - 5) * DAY  # midnight UTC five days ago: day 1 of the seeded window
WINDOW = {"since": str(BASE), "until": str(BASE + 2 * DAY)}
SPREAD_SINCE = BASE - 10 * DAY  # a day of many close latencies, for the accuracy of the percentiles


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def percentile_cont(values: list[float], p: float) -> float:
    """What Postgres' percentile_cont computes: linear between the two ranks around p * (n - 1)."""
    s = sorted(values)
    rank = p * (len(s) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (rank - lo) * (s[hi] - s[lo])


@dataclass
class Seeded:
    gw: PortwayProcess
    key_a: str  # a key of user U
    key_a_id: str
    key_b: str  # a key of no user
    key_b_id: str
    user_id: str
    user_token: str
    records: list[UsageRecord]
    spread: list[float]


def _seed_records(key_a: str, key_b: str, user_id: str) -> list[UsageRecord]:
    out: list[UsageRecord] = []

    def add(principal: str, ts: float, **kw: Any) -> None:
        out.append(UsageRecord(ts=ts, request_id=f"seed{len(out)}", principal=principal, **kw))

    for i in range(10):  # key A, day 1: model m-a on p1, every other one streamed
        add(
            f"key:{key_a}",
            BASE + 3600 * i,
            requested_model="fast",
            provider="p1",
            served_model="m-a",
            status=200,
            latency_ms=100.0 * (i + 1),
            prompt_tokens=10 + i,
            completion_tokens=5,
            cost_usd=0.001,
            stream=i % 2 == 0,
            ttft_ms=10.0 * (i + 1) if i % 2 == 0 else 0.0,
        )
    for i, status in enumerate((200, 200, 500, 429, 200)):  # key B, day 2: m-b on p2, two errors
        add(
            f"key:{key_b}",
            BASE + DAY + 600 * i,
            requested_model="m-b",
            provider="p2",
            served_model="m-b",
            status=status,
            latency_ms=50.0 * (i + 1),
            prompt_tokens=100,
            completion_tokens=20 if status == 200 else 0,
            cost_usd=0.01 if status == 200 else 0.0,
        )
    for i in range(3):  # the master key's embeddings, day 2
        add(
            "master",
            BASE + DAY + 7200 + i,
            requested_model="emb",
            provider="p1",
            served_model="e-1",
            status=200,
            latency_ms=20.0 + i,
            prompt_tokens=7,
            endpoint="embeddings",
            cost_usd=0.0001,
        )
    for i in range(2):  # user U with its token, day 1
        add(
            f"user:{user_id}",
            BASE + 80000 + i,
            requested_model="fast",
            provider="p1",
            served_model="m-a",
            status=200,
            latency_ms=300.0 + i,
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=0.002,
        )
    return out


def _spread(rng: random.Random) -> list[float]:
    return [rng.lognormvariate(5.5, 0.6) for _ in range(3000)]


def _start(tmp: Any, upstream: FakeUpstream, db_url: str | None) -> Seeded:
    env = {"PORTWAY_DATABASE_URL": db_url} if db_url else None
    gw = PortwayProcess(tmp, gateway_config(upstream), env=env)
    h = gw.headers()
    user = HTTP.post(
        gw.url + "/admin/users", json={"email": "u@example.com", "password": "secret-pass-1"}, headers=h
    )
    assert user.status_code == 201, user.text
    uid = user.json()["id"]
    a = HTTP.post(gw.url + "/admin/keys", json={"name": "a", "user_id": uid}, headers=h).json()
    b = HTTP.post(gw.url + "/admin/keys", json={"name": "b"}, headers=h).json()
    login = HTTP.post(gw.url + "/auth/login", json={"email": "u@example.com", "password": "secret-pass-1"})
    assert login.status_code == 200, login.text
    records = _seed_records(a["id"], b["id"], uid)
    spread = _spread(random.Random(15))
    extra = [
        UsageRecord(
            ts=SPREAD_SINCE + i,
            request_id=f"sp{i}",
            principal="master",
            requested_model="spread",
            provider="p9",
            served_model="spread",
            status=200,
            latency_ms=v,
            stream=True,
            ttft_ms=v / 4,
        )
        for i, v in enumerate(spread)
    ]

    async def seed() -> None:
        db = Database(db_url or f"sqlite+aiosqlite:///{gw.data_dir / 'portway.db'}")
        try:
            await db.write_usage(records + extra)
        finally:
            await db.aclose()

    asyncio.run(seed())
    return Seeded(
        gw, a["key"], a["id"], b["key"], b["id"], uid, login.json()["access_token"], records, spread
    )


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def seeded(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    db_url = None
    name = "portway_usage_" + secrets.token_hex(4)
    if request.param == "postgres":
        services.require("postgres")
        asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
        db_url = (
            urlsplit(services.POSTGRES_URL)._replace(scheme="postgresql+asyncpg", path="/" + name).geturl()
        )
    s = _start(tmp_path_factory.mktemp(f"usage-{request.param}"), upstream, db_url)
    yield s
    s.gw.stop()
    if db_url:
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _get(s: Seeded, path: str, auth: str | None = None, **params: Any) -> httpx.Response:
    return HTTP.get(s.gw.url + path, params=params, headers=s.gw.headers(auth), timeout=20)


def _expected(rows: list[UsageRecord]) -> dict[str, Any]:
    ttfts = [r.ttft_ms for r in rows if r.stream and r.ttft_ms > 0]
    lat = [r.latency_ms for r in rows]
    return {
        "requests": len(rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "total_tokens": sum(r.prompt_tokens + r.completion_tokens for r in rows),
        "cost_usd": pytest.approx(sum(r.cost_usd for r in rows), abs=1e-9),
        "errors": sum(r.status >= 400 for r in rows),
        "latency_ms_p50": pytest.approx(percentile_cont(lat, 0.5), abs=1e-3),
        "latency_ms_p95": pytest.approx(percentile_cont(lat, 0.95), abs=1e-3),
        "ttft_ms_p50": pytest.approx(percentile_cont(ttfts, 0.5), abs=1e-3) if ttfts else None,
        "ttft_ms_p95": pytest.approx(percentile_cont(ttfts, 0.95), abs=1e-3) if ttfts else None,
    }


def test_totals_match_hand_computed_figures(seeded: Seeded) -> None:
    r = _get(seeded, "/admin/usage", **WINDOW)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"object", "since", "until", "group_by", "totals", "groups"}
    assert body["object"] == "usage" and body["group_by"] is None and body["groups"] == []
    assert (body["since"], body["until"]) == (iso(BASE), iso(BASE + 2 * DAY))
    assert body["totals"] == _expected(seeded.records)


@pytest.mark.parametrize("group_by", ["model", "provider", "day", "hour", "key", "user"])
def test_group_by_matches_hand_computed_groups(seeded: Seeded, group_by: str) -> None:
    user_of = {f"key:{seeded.key_a_id}": seeded.user_id, f"user:{seeded.user_id}": seeded.user_id}
    key_of = {f"key:{seeded.key_a_id}": seeded.key_a_id, f"key:{seeded.key_b_id}": seeded.key_b_id}
    by = {
        "model": lambda r: r.served_model,
        "provider": lambda r: r.provider,
        "day": lambda r: iso(r.ts // DAY * DAY),
        "hour": lambda r: iso(r.ts // 3600 * 3600),
        "key": lambda r: key_of.get(r.principal),
        "user": lambda r: user_of.get(r.principal),
    }[group_by]
    want: dict[Any, list[UsageRecord]] = {}
    for rec in seeded.records:
        want.setdefault(by(rec), []).append(rec)
    body = _get(seeded, "/admin/usage", group_by=group_by, **WINDOW).json()
    assert body["group_by"] == group_by
    got = {g.pop("key"): g for g in body["groups"]}
    assert got == {k: _expected(rows) for k, rows in want.items()}
    assert body["totals"] == _expected(seeded.records)
    if group_by in ("day", "hour"):
        keys = [g for g in got]
        assert keys == sorted(keys)  # a time series, oldest first


@pytest.mark.parametrize(
    ("params", "select"),
    [
        ({"status": "error"}, lambda r, s: r.status >= 400),
        ({"status": "5xx"}, lambda r, s: 500 <= r.status <= 599),
        ({"status": "429"}, lambda r, s: r.status == 429),
        ({"provider": "p2"}, lambda r, s: r.provider == "p2"),
        ({"model": "fast"}, lambda r, s: r.requested_model == "fast"),  # the model asked for
        ({"model": "e-1"}, lambda r, s: r.served_model == "e-1"),  # or the one that answered
        ({"endpoint": "embeddings"}, lambda r, s: r.endpoint == "embeddings"),
        ({"key": "KEY_B"}, lambda r, s: r.principal == f"key:{s.key_b_id}"),
        ({"user": "USER"}, lambda r, s: r.principal in (f"key:{s.key_a_id}", f"user:{s.user_id}")),
    ],
)
def test_filters(seeded: Seeded, params: dict[str, str], select: Any) -> None:
    params = {k: {"KEY_B": seeded.key_b_id, "USER": seeded.user_id}.get(v, v) for k, v in params.items()}
    resp = _get(seeded, "/admin/usage", **params, **WINDOW)
    assert resp.status_code == 200, resp.text
    assert resp.json()["totals"] == _expected([r for r in seeded.records if select(r, seeded)])


def test_time_window_in_every_notation(seeded: Seeded) -> None:
    day2 = [r for r in seeded.records if r.ts >= BASE + DAY]
    for since in (str(BASE + DAY), iso(BASE + DAY), iso(BASE + DAY).rstrip("Z")):  # naive ISO is UTC
        body = _get(seeded, "/admin/usage", since=since, until=str(BASE + 2 * DAY)).json()
        assert body["totals"]["requests"] == len(day2), since
    # Relative: the last 6 days hold the seeded window (and any real traffic), not the spread day.
    recent = _get(seeded, "/admin/usage", since="6d").json()["totals"]["requests"]
    assert len(seeded.records) <= recent < len(seeded.records) + 50
    wide = _get(seeded, "/admin/usage", since="30d").json()["totals"]["requests"]
    assert wide == recent + len(seeded.spread)


def test_percentiles_are_close_on_many_close_values(seeded: Seeded) -> None:
    """3,000 lognormal latencies: within 1 % of percentile_cont (SQLite buckets), exact on Postgres."""
    body = _get(seeded, "/admin/usage", model="spread", since=str(SPREAD_SINCE), until=str(BASE)).json()
    t = body["totals"]
    for name, p in (("latency_ms_p50", 0.5), ("latency_ms_p95", 0.95)):
        assert t[name] == pytest.approx(percentile_cont(seeded.spread, p), rel=0.01)
    assert t["ttft_ms_p95"] == pytest.approx(percentile_cont(seeded.spread, 0.95) / 4, rel=0.01)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-01"}, "until"),
        ({"until": "99999999999999999999"}, "until"),  # past year 9999
        ({"since": "0001-01-01T00:00:00Z"}, "since"),  # before 1970
        ({"since": "1d", "until": "2d"}, "since"),  # since after until
        ({"status": "teapot"}, "status"),
        ({"format": "xml"}, "format"),
        ({"rows": "true", "limit": "5000"}, "limit"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(seeded: Seeded, params: dict[str, str], param: str) -> None:
    for path in ("/admin/usage", "/v1/usage"):
        r = _get(seeded, path, **params)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["code"], err["type"], err["param"]) == (
            "validation_error",
            "invalid_request_error",
            param,
        )
    csv_r = _get(seeded, "/admin/usage", format="csv", since="yesterday")  # the export checks first too
    assert csv_r.status_code == 400


def test_admin_usage_needs_an_admin(seeded: Seeded) -> None:
    assert HTTP.get(seeded.gw.url + "/admin/usage").status_code == 401
    for key in (seeded.key_a, seeded.key_b, seeded.user_token):
        r = _get(seeded, "/admin/usage", key)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "permission_denied"
    assert HTTP.get(seeded.gw.url + "/v1/usage").status_code == 401


def test_a_key_sees_only_its_own_usage(seeded: Seeded) -> None:
    own_b = [r for r in seeded.records if r.principal == f"key:{seeded.key_b_id}"]
    body = _get(seeded, "/v1/usage", seeded.key_b, group_by="key", **WINDOW).json()
    assert body["totals"] == _expected(own_b)
    assert [g["key"] for g in body["groups"]] == [seeded.key_b_id]
    # Naming another key (or user) narrows nothing open: it finds none of B's rows and none of theirs.
    other = _get(seeded, "/v1/usage", seeded.key_b, key=seeded.key_a_id, **WINDOW).json()
    assert other["totals"]["requests"] == 0 and other["totals"]["latency_ms_p50"] is None
    by_user = _get(seeded, "/v1/usage", seeded.key_b, user=seeded.user_id, **WINDOW).json()
    assert by_user["totals"]["requests"] == 0
    rows = _get(seeded, "/v1/usage", seeded.key_b, rows="true", **WINDOW).json()["rows"]
    assert {r["principal"] for r in rows} == {f"key:{seeded.key_b_id}"}


def test_a_user_sees_its_own_and_its_keys_usage(seeded: Seeded) -> None:
    mine = [r for r in seeded.records if r.principal in (f"key:{seeded.key_a_id}", f"user:{seeded.user_id}")]
    body = _get(seeded, "/v1/usage", seeded.user_token, **WINDOW).json()
    assert body["totals"] == _expected(mine)
    # Key A (of user U) sees only its own rows, not the user's.
    key_a = _get(seeded, "/v1/usage", seeded.key_a, **WINDOW).json()
    assert key_a["totals"]["requests"] == sum(r.principal == f"key:{seeded.key_a_id}" for r in seeded.records)


def test_rows_are_paginated_newest_first(seeded: Seeded) -> None:
    want = sorted(seeded.records, key=lambda r: r.ts, reverse=True)
    first = _get(seeded, "/admin/usage", rows="true", limit=4, **WINDOW).json()
    second = _get(seeded, "/admin/usage", rows="true", limit=4, offset=4, **WINDOW).json()
    assert (first["limit"], first["offset"], second["offset"]) == (4, 0, 4)
    ids = [r["request_id"] for r in first["rows"] + second["rows"]]
    assert ids == [r.request_id for r in want[:8]]
    row = first["rows"][0]
    assert row["time"] == iso(want[0].ts) and row["principal"] == want[0].principal
    assert {"latency_ms", "ttft_ms", "cost_usd", "status", "endpoint", "cached_tokens"} <= set(row)


def test_csv_export_of_groups_and_rows(seeded: Seeded) -> None:
    r = _get(seeded, "/admin/usage", group_by="model", format="csv", **WINDOW)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="portway-usage-by-model.csv"'
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["model"]: int(row["requests"]) for row in table} == {"m-a": 12, "m-b": 5, "e-1": 3}
    assert set(table[0]) >= {"cost_usd", "latency_ms_p95", "ttft_ms_p50", "errors"}
    # Accept: text/csv without group_by exports the rows themselves.
    rows = HTTP.get(
        seeded.gw.url + "/admin/usage",
        params=WINDOW,
        headers={**seeded.gw.headers(), "Accept": "text/csv"},
    )
    assert rows.status_code == 200 and "attachment" in rows.headers["content-disposition"]
    exported = list(csv.DictReader(io.StringIO(rows.text)))
    assert sorted(x["request_id"] for x in exported) == sorted(x.request_id for x in seeded.records)
    assert {x["principal"] for x in exported} >= {"master", f"key:{seeded.key_b_id}"}


def test_real_traffic_is_reported_with_ttft_for_streams(seeded: Seeded) -> None:
    chat = seeded.gw.base_url + "/chat/completions"
    h = seeded.gw.headers(seeded.key_b)
    msg = {"model": "direct", "messages": [{"role": "user", "content": "hi"}]}
    assert HTTP.post(chat, json=msg, headers=h, timeout=20).status_code == 200
    with HTTP.stream("POST", chat, json={**msg, "stream": True}, headers=h, timeout=20) as s:
        assert s.status_code == 200
        s.read()
    deadline = time.monotonic() + 10
    while True:  # the usage writer flushes every 200 ms
        body = _get(seeded, "/v1/usage", seeded.key_b, since="1h", group_by="provider").json()
        if body["totals"]["requests"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    t = body["totals"]
    assert t["requests"] == 2 and t["errors"] == 0 and t["total_tokens"] > 0
    assert [g["key"] for g in body["groups"]] == ["up"]
    assert t["ttft_ms_p50"] is not None and 0 < t["ttft_ms_p50"] <= t["latency_ms_p95"]
