"""Virtual keys and rotating keys against a real gateway process (real SQLite, fake upstream)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from portway.identity.models import KeyCreate, PolicyCreate
from portway.identity.service import Identity, IdentityConfig
from portway.stores.sql.database import Database
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
MSGS = [{"role": "user", "content": "ping"}]


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    # limits.per_user is seed 003's daily quota: it applies only to users without limits of their own, and
    # only test_per_user_default_applies_to_users_without_limits makes such users.
    cfg = {**gateway_config(upstream), "limits": {"per_user": {"daily_requests": 3}}}
    proc = PortwayProcess(tmp_path_factory.mktemp("keys"), cfg)
    yield proc
    proc.stop()


def admin(gw: PortwayProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return HTTP.request(method, gw.url + path, headers=gw.headers(), timeout=10, **kw)


def create_key(gw: PortwayProcess, **fields: Any) -> dict[str, Any]:
    r = admin(gw, "POST", "/admin/keys", json={"name": "test", **fields})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def models_status(gw: PortwayProcess, key: str) -> int:
    return HTTP.get(gw.base_url + "/models", headers=gw.headers(key), timeout=10).status_code


def error_code(r: httpx.Response) -> str:
    code: str = r.json()["error"]["code"]
    return code


def test_key_lifecycle_create_use_revoke(gw: PortwayProcess) -> None:
    created = create_key(gw, rpm=100, daily_requests=1000, metadata={"team": "a"})
    key, key_id = created["key"], created["id"]
    assert key.startswith("sk-pw-") and created["status"] == "active"
    assert created["display_prefix"] == key[:10] + "…"
    assert models_status(gw, key) == 200
    chat = HTTP.post(
        gw.base_url + "/chat/completions",
        json={"model": "direct", "messages": MSGS},
        headers=gw.headers(key),
        timeout=20,
    )
    assert chat.status_code == 200, chat.text

    shown = admin(gw, "GET", f"/admin/keys/{key_id}").json()
    assert "key" not in shown and "key_hash" not in shown and key not in str(shown)
    assert shown["metadata"] == {"team": "a"}

    r = admin(gw, "POST", f"/admin/keys/{key_id}/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    r = HTTP.get(gw.base_url + "/models", headers=gw.headers(key))
    assert r.status_code == 401 and error_code(r) == "invalid_api_key"
    assert "revoked" in r.json()["error"]["message"]


def test_me_shows_key_and_limits(gw: PortwayProcess) -> None:
    created = create_key(gw, rpm=7, tpm=5000, budget_usd=1.5, budget_period="daily")
    HTTP.get(gw.base_url + "/models", headers=gw.headers(created["key"]))
    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(created["key"])).json()
    assert me["principal"] == f"key:{created['id']}" and me["is_admin"] is False
    assert me["key"]["id"] == created["id"] and me["user"] is None
    kinds = {(lim["kind"], lim["limit"]) for lim in me["limits"]}
    assert kinds == {("rpm", 7), ("tpm", 5000), ("budget", 1.5)}
    for lim in me["limits"]:
        assert set(lim) >= {"kind", "limit", "used", "remaining", "reset_at"}
    usage = admin(gw, "GET", f"/admin/keys/{created['id']}/usage").json()
    assert usage["scope"] == f"key:{created['id']}" and len(usage["limits"]) == 3


def test_unknown_and_expired_keys_are_refused(gw: PortwayProcess) -> None:
    assert models_status(gw, "sk-pw-" + "x" * 43) == 401
    created = create_key(gw, expires_in_seconds=0.75)
    assert models_status(gw, created["key"]) == 200
    deadline = time.monotonic() + 5
    while models_status(gw, created["key"]) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = HTTP.get(gw.base_url + "/models", headers=gw.headers(created["key"]))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]

    other = create_key(gw)
    assert models_status(gw, other["key"]) == 200  # now cached
    r = admin(gw, "PATCH", f"/admin/keys/{other['id']}", json={"expires_at": "2001-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["status"] == "expired"
    assert models_status(gw, other["key"]) == 401  # the admin change dropped the cache entry


def test_admin_rotate_replaces_the_key_with_same_settings(gw: PortwayProcess) -> None:
    old = create_key(gw, rpm=42, allowed_models=["direct", "chain*"])
    r = admin(gw, "POST", f"/admin/keys/{old['id']}/rotate")
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"] != old["key"] and new["id"] != old["id"]
    assert (new["rpm"], new["allowed_models"]) == (42, ["direct", "chain*"])
    assert models_status(gw, new["key"]) == 200
    assert models_status(gw, old["key"]) == 401
    assert admin(gw, "POST", f"/admin/keys/{old['id']}/rotate").status_code == 400  # already revoked


def test_disabled_owner_disables_the_key(gw: PortwayProcess) -> None:
    user = admin(gw, "POST", "/admin/users", json={"email": "owner@example.com", "rpm": 3}).json()
    created = create_key(gw, user_id=user["id"])
    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(created["key"])).json()
    assert me["user"]["id"] == user["id"]
    assert {(lim["scope"], lim["kind"]) for lim in me["limits"]} == {(f"user:{user['id']}", "rpm")}
    admin(gw, "PATCH", f"/admin/users/{user['id']}", json={"disabled": True}).raise_for_status()
    assert models_status(gw, created["key"]) == 401
    r = admin(gw, "POST", "/admin/keys", json={"name": "x", "user_id": "user_nope"})
    assert r.status_code == 400 and error_code(r) == "validation_error"


def test_last_used_at_is_recorded_off_the_hot_path(gw: PortwayProcess) -> None:
    created = create_key(gw)
    assert created["last_used_at"] is None
    assert models_status(gw, created["key"]) == 200
    deadline = time.monotonic() + 10  # written by a background task every few seconds
    while time.monotonic() < deadline:
        if admin(gw, "GET", f"/admin/keys/{created['id']}").json()["last_used_at"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("last_used_at was never written")


def _current(gw: PortwayProcess, policy: str) -> dict[str, Any]:
    r = admin(gw, "GET", "/admin/keys/current", params={"policy": policy})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    return body


def test_rotating_key_policy_rotates_on_a_timer(gw: PortwayProcess) -> None:
    r = admin(gw, "POST", "/admin/key-policies", json={"name": "ci", "period_seconds": 1.5, "rpm": 9})
    assert r.status_code == 201, r.text
    first = _current(gw, "ci")
    assert first["api_key"] == r.json()["api_key"] and first["key_id"] == r.json()["key_id"]
    assert set(first) >= {"policy", "api_key", "key_id", "expires_at", "rotated_at"}
    key_a = first["api_key"]
    assert models_status(gw, key_a) == 200
    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(key_a)).json()
    assert me["is_admin"] is False and [lim["limit"] for lim in me["limits"]] == [9]

    # Poll only the admin view of the policy (not /keys/current, which would rotate an overdue policy
    # itself): the background timer has to do it.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        policy = admin(gw, "GET", "/admin/key-policies/ci").json()
        if policy["current_key_id"] != first["key_id"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the policy did not rotate within 4 s")
    second = _current(gw, "ci")
    assert second["api_key"] != key_a and second["key_id"] != first["key_id"]
    assert models_status(gw, second["api_key"]) == 200
    assert models_status(gw, key_a) == 401  # grace 0


def test_rotating_key_grace_keeps_the_previous_key(gw: PortwayProcess) -> None:
    body = {"name": "graceful", "period_seconds": 3600, "grace_seconds": 60}
    first = admin(gw, "POST", "/admin/key-policies", json=body).json()
    r = admin(gw, "POST", "/admin/key-policies/graceful/rotate")
    assert r.status_code == 200 and r.json()["api_key"] != first["api_key"]
    assert models_status(gw, first["api_key"]) == 200  # inside the grace period
    assert models_status(gw, r.json()["api_key"]) == 200
    old = admin(gw, "GET", f"/admin/keys/{first['key_id']}").json()
    assert old["expires_at"] is not None
    r = admin(gw, "POST", f"/admin/keys/{r.json()['key_id']}/rotate")
    assert r.status_code == 400  # policy keys rotate through their policy


def _text_cells(db: Path) -> Iterator[tuple[str, str, str]]:
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            cols = [d[0] for d in cur.description]
            for row in cur:
                for col, value in zip(cols, row, strict=True):
                    if isinstance(value, bytes):
                        value = value.decode("latin-1")
                    if isinstance(value, str):
                        yield table, col, value
    finally:
        con.close()


def test_database_holds_no_plaintext_key(gw: PortwayProcess) -> None:
    keys = [create_key(gw, name=f"scan-{i}")["key"] for i in range(3)]
    rotated = create_key(gw, name="scan-rot")
    keys.append(rotated["key"])
    keys.append(admin(gw, "POST", f"/admin/keys/{rotated['id']}/rotate").json()["key"])
    policy = admin(gw, "POST", "/admin/key-policies", json={"name": "scan", "period_seconds": 3600})
    keys.append(policy.json()["api_key"])
    for key in keys:
        models_status(gw, key)  # exercise the auth path (cache, last-used) too

    db = gw.data_dir / "portway.db"
    cells = list(_text_cells(db))
    assert any(table == "api_keys" for table, _, _ in cells)
    for key in keys:
        secret_part = key[len("sk-pw-") :]
        for table, col, value in cells:
            assert secret_part not in value, f"plaintext key found in {table}.{col}"
    raw = b"".join(p.read_bytes() for p in db.parent.glob("portway.db*"))  # db, -wal, -shm
    for key in keys:
        assert key[6:].encode() not in raw
    assert keys[-1] not in (gw.log())  # nor in the server log


async def test_rotation_race_between_replicas(tmp_path: Path) -> None:
    """Two replicas (two Identity instances, two engines, one SQLite file) rotate the same policy at once:
    exactly one wins, and the policy ends with one current key."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'portway.db'}"
    dbs = [Database(url), Database(url)]
    await dbs[0].migrate()
    cfg = IdentityConfig(data_dir=tmp_path, secret_key="shared-secret")
    a, b = (Identity(cfg, db.engine) for db in dbs)
    try:
        policy, _, _first = await a.rotation.create_policy(PolicyCreate(name="race", period_seconds=60))
        for _ in range(5):
            policy = await a.rotation.get("race")
            won = await asyncio.gather(a.rotation.rotate(policy), b.rotation.rotate(policy))
            assert sorted(won) == [False, True]
        final = await b.rotation.get("race")
        _rows, total = await a.store.list_keys(limit=100, offset=0, policy_id=final.id)
        assert total == 6  # the first key + one per round, not two per round
        current = await b.rotation.current("race")
        assert current["key_id"] == final.current_key_id
        assert (await a.resolve_key(current["api_key"])).key_id == final.current_key_id
    finally:
        for db in dbs:
            await db.aclose()


async def test_expired_cache_entry_is_reloaded_once_for_concurrent_requests(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'portway.db'}")
    await db.migrate()
    identity = Identity(IdentityConfig(data_dir=tmp_path, secret_key="s"), db.engine, key_ttl=0.0)
    try:
        _row, plaintext = await identity.keys.create(KeyCreate(name="busy"))
        queries = 0
        find_key = identity.store.find_key

        async def counting(key_hash: str) -> Any:
            nonlocal queries
            queries += 1
            return await find_key(key_hash)

        identity.store.find_key = counting  # type: ignore[method-assign]
        principals = await asyncio.gather(*(identity.resolve_key(plaintext) for _ in range(50)))
        assert {p.key_id for p in principals} == {_row.id}
        assert queries == 1  # single flight: one query for all fifty, not fifty
    finally:
        await db.aclose()


def test_per_user_default_applies_to_users_without_limits(gw: PortwayProcess) -> None:
    """Regression: a user's all-empty LimitSpec was truthy, so limits.per_user (seed 003's daily quota)
    never applied. Admission and /v1/me now share one computation of the limits that apply."""

    def user_token(email: str, **limits: Any) -> tuple[str, str]:
        creds = {"email": email, "password": "a long password"}
        user = admin(gw, "POST", "/admin/users", json=creds | limits).json()
        login = HTTP.post(gw.url + "/auth/login", json=creds, timeout=10)
        return user["id"], login.json()["access_token"]

    def chat(token: str) -> httpx.Response:
        body = {"model": "direct", "messages": MSGS}
        return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers(token))

    plain_id, plain = user_token("plain@example.com")
    _, own = user_token("own@example.com", daily_requests=5)
    assert [chat(plain).status_code for _ in range(3)] == [200, 200, 200]
    refused = chat(plain)
    assert refused.status_code == 429 and error_code(refused) == "quota_exceeded", refused.text
    assert [chat(own).status_code for _ in range(5)] == [200] * 5  # their own limit, not the default
    assert error_code(chat(own)) == "quota_exceeded"

    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(plain)).json()
    assert [(u["kind"], u["limit"], u["used"]) for u in me["limits"]] == [("daily_requests", 3, 3)]
    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(own)).json()
    assert [(u["kind"], u["limit"], u["remaining"]) for u in me["limits"]] == [("daily_requests", 5, 0)]
    usage = admin(gw, "GET", f"/admin/users/{plain_id}/usage").json()
    assert [(u["kind"], u["limit"], u["used"]) for u in usage["limits"]] == [("daily_requests", 3, 3)]
    # A key owned by a user without limits counts against that user's default quota too.
    key = admin(gw, "POST", "/admin/keys", json={"name": "k", "user_id": plain_id}).json()["key"]
    assert error_code(chat(key)) == "quota_exceeded"
