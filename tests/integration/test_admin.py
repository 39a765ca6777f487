"""Admin API and user login against a real gateway process: access control on every /admin route, users,
JWTs (valid, expired, alg none, tampered), admin emails, validation, pagination, email-only login."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import MASTER_KEY, PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
BOSS = "boss@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    env = {"PORTWAY_ADMIN_EMAILS": f"someone@else.org, {BOSS.upper()}"}
    proc = PortwayProcess(tmp_path_factory.mktemp("admin"), gateway_config(upstream), env=env)
    yield proc
    proc.stop()


def call(
    gw: PortwayProcess, method: str, path: str, token: str | None = MASTER_KEY, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return HTTP.request(method, gw.url + path, headers=headers, timeout=10, **kw)


def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def err(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    code: str = r.json()["error"]["code"]
    return code


def login(gw: PortwayProcess, email: str, password: str | None = PASSWORD) -> httpx.Response:
    body = {"email": email} if password is None else {"email": email, "password": password}
    return HTTP.post(gw.url + "/auth/login", json=body, timeout=10)


def token_for(gw: PortwayProcess, email: str, **user: Any) -> str:
    ok(call(gw, "POST", "/admin/users", json={"email": email, "password": PASSWORD, **user}), 201)
    body = ok(login(gw, email))
    assert body["token_type"] == "bearer" and body["expires_in"] == 86400
    token: str = body["access_token"]
    return token


# -- every admin route refuses non-admins ------------------------------------------------------------


def admin_routes(gw: PortwayProcess) -> list[tuple[str, str]]:
    """(method, path) of every /admin route, read from the running app's own route table (OpenAPI)."""
    paths = HTTP.get(gw.url + "/openapi.json").json()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() if p.startswith("/admin") for m in ops]


def test_every_admin_route_needs_an_admin(gw: PortwayProcess) -> None:
    routes = admin_routes(gw)
    assert len(routes) >= 17 and ("GET", "/admin/keys/current") in routes
    normal_key = ok(call(gw, "POST", "/admin/keys", json={"name": "normal"}), 201)["key"]
    user_token = token_for(gw, "plain@example.com")
    for method, template in routes:
        path = re.sub(r"\{[^}]+\}", "x", template)
        for token in (normal_key, user_token):
            r = call(gw, method, path, token, json={}, params={"policy": "x"})
            assert err(r, 403) == "permission_denied", (method, path)
        for token in (None, "sk-pw-unknown", "garbage.jwt.token"):
            r = call(gw, method, path, token, json={}, params={"policy": "x"})
            assert err(r, 401) == "invalid_api_key", (method, path, token)


# -- users and JWT -----------------------------------------------------------------------------------


def test_password_login_and_jwt_use(gw: PortwayProcess) -> None:
    token = token_for(gw, "Alice@Example.com", rpm=30, daily_requests=100)
    assert HTTP.get(gw.base_url + "/models", headers=gw.headers(token)).status_code == 200
    me = ok(HTTP.get(gw.base_url + "/me", headers=gw.headers(token)))
    assert me["principal"].startswith("user:") and me["is_admin"] is False and me["key"] is None
    assert me["user"]["email"] == "alice@example.com" and "password_hash" not in me["user"]
    assert {(lim["kind"], lim["limit"]) for lim in me["limits"]} == {("rpm", 30), ("daily_requests", 100)}
    assert err(call(gw, "GET", "/admin/keys", token), 403) == "permission_denied"


def test_login_failures_do_not_enumerate_users(gw: PortwayProcess) -> None:
    ok(call(gw, "POST", "/admin/users", json={"email": "bob@example.com", "password": PASSWORD}), 201)
    wrong = login(gw, "bob@example.com", "not the password")
    unknown = login(gw, "nobody@example.com", "not the password")
    assert err(wrong, 401) == err(unknown, 401) == "invalid_api_key"
    assert wrong.json() == unknown.json()
    assert err(login(gw, "bob@example.com", None), 400) == "validation_error"  # password mode


def test_admin_emails_and_admin_flag_grant_admin(gw: PortwayProcess) -> None:
    boss = token_for(gw, BOSS)
    ok(call(gw, "GET", "/admin/keys", boss))
    assert ok(HTTP.get(gw.base_url + "/me", headers=gw.headers(boss)))["is_admin"] is True
    carol = ok(
        call(gw, "POST", "/admin/users", json={"email": "carol@example.com", "password": PASSWORD}), 201
    )
    token = ok(login(gw, "carol@example.com"))["access_token"]
    assert call(gw, "GET", "/admin/users", token).status_code == 403
    ok(call(gw, "PATCH", f"/admin/users/{carol['id']}", json={"is_admin": True}))
    ok(call(gw, "GET", "/admin/users", token))  # same token: admin status is read from the user
    ok(call(gw, "PATCH", f"/admin/users/{carol['id']}", json={"disabled": True}))
    assert err(call(gw, "GET", "/admin/users", token), 401) == "invalid_api_key"
    assert err(login(gw, "carol@example.com"), 401) == "invalid_api_key"


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_bad_jwts_are_refused(gw: PortwayProcess) -> None:
    good = token_for(gw, "dave@example.com")
    sub = jwt.decode(good, options={"verify_signature": False})["sub"]
    secret = (gw.data_dir / "jwt.key").read_text().strip().encode()
    now = int(time.time())
    claims = {"sub": sub, "email": "dave@example.com", "iat": now - 100, "exp": now - 10}
    header, _, sig = good.split(".")
    bad = {
        "expired": jwt.encode(claims, secret, algorithm="HS256"),
        "alg-none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({**claims, 'exp': now + 600})}.",
        "tampered": f"{header}.{_b64({**claims, 'exp': now + 600, 'adm': True})}.{sig}",
        "wrong-key": jwt.encode({**claims, "exp": now + 600}, b"x" * 32, algorithm="HS256"),
        "no-exp": jwt.encode({"sub": sub, "iat": now}, secret, algorithm="HS256"),
    }
    for name, token in bad.items():
        r = HTTP.get(gw.base_url + "/models", headers=gw.headers(token))
        assert err(r, 401) == "invalid_api_key", name
    assert HTTP.get(gw.base_url + "/models", headers=gw.headers(good)).status_code == 200


# -- admin API behaviour -------------------------------------------------------------------------------


def test_validation_errors_are_400(gw: PortwayProcess) -> None:
    cases = [
        ("POST", "/admin/keys", {"name": "x", "surprise": 1}),
        ("POST", "/admin/keys", {"budget_period": "weekly"}),
        ("POST", "/admin/keys", {"rpm": -1}),
        ("POST", "/admin/users", {"email": "not-an-email"}),
        ("POST", "/admin/users", {"email": "short@example.com", "password": "short"}),
        ("POST", "/admin/key-policies", {"name": "bad name!", "period_seconds": 10}),
        ("POST", "/admin/key-policies", {"name": "fast", "period_seconds": 0.01}),
        # Out of range: each of these used to reach the database or the counters and come back as a 500.
        ("POST", "/admin/keys", {"tpm": 2**65}),
        ("POST", "/admin/keys", {"rpm": 2**31}),
        ("POST", "/admin/keys", {"budget_usd": 1e300}),
        ("POST", "/admin/keys", {"expires_in_seconds": 1e300}),
        ("POST", "/admin/keys", {"expires_at": "9999-12-31T23:59:59-23:00"}),
        ("POST", "/admin/keys", {"name": "a\x00b"}),
        ("POST", "/admin/keys", {"allowed_models": ["ok", "\x00"]}),
        ("POST", "/admin/keys", {"metadata": {"n": 2**70}}),
        ("POST", "/admin/keys", {"metadata": {"s": "\x00"}}),
        ("POST", "/admin/users", {"email": "a@b.c", "daily_requests": 2**63}),
        ("POST", "/admin/key-policies", {"name": "huge", "period_days": 1e300}),
        ("POST", "/admin/key-policies", {"name": "grace", "grace_seconds": 1e300}),
    ]
    for method, path, body in cases:
        assert err(call(gw, method, path, json=body), 400) == "validation_error", body
    for raw in (b'{"budget_usd": NaN}', b'{"budget_usd": Infinity}', b'{"name": "\\ud800"}'):
        headers = {**gw.headers(), "Content-Type": "application/json"}
        r = HTTP.post(gw.url + "/admin/keys", content=raw, headers=headers, timeout=10)
        assert err(r, 400) == "validation_error", raw
    for path in ("/admin/keys?offset=313657725801729884160", "/admin/keys/a%00b", "/admin/users?email=%00"):
        assert err(call(gw, "GET", path), 400) == "validation_error", path
    ok(call(gw, "POST", "/admin/users", json={"email": "twice@example.com"}), 201)
    assert (
        err(call(gw, "POST", "/admin/users", json={"email": "TWICE@example.com"}), 400) == "validation_error"
    )
    assert err(call(gw, "GET", "/admin/keys/key_missing"), 404) == "not_found"
    assert err(call(gw, "GET", "/admin/keys/current", params={"policy": "nope"}), 404) == "not_found"
    assert err(call(gw, "GET", "/admin/keys", params={"limit": 0}), 400) == "validation_error"


def test_pagination_and_filters(gw: PortwayProcess) -> None:
    user = ok(call(gw, "POST", "/admin/users", json={"email": "pager@example.com"}), 201)
    for i in range(5):
        ok(call(gw, "POST", "/admin/keys", json={"name": f"page-{i}", "user_id": user["id"]}), 201)
    page = ok(call(gw, "GET", "/admin/keys", params={"user_id": user["id"], "limit": 2, "offset": 1}))
    assert page["object"] == "list" and page["total"] == 5 and (page["limit"], page["offset"]) == (2, 1)
    assert [k["name"] for k in page["data"]] == ["page-1", "page-2"]
    assert all("key" not in k and "key_hash" not in k for k in page["data"])
    one = ok(call(gw, "GET", "/admin/keys", params={"name": "page-3"}))
    assert one["total"] == 1
    ok(call(gw, "POST", f"/admin/keys/{one['data'][0]['id']}/revoke"))
    revoked = ok(call(gw, "GET", "/admin/keys", params={"user_id": user["id"], "revoked": "true"}))
    assert [k["name"] for k in revoked["data"]] == ["page-3"]
    users = ok(call(gw, "GET", "/admin/users", params={"email": "PAGER@example.com"}))
    assert users["total"] == 1 and users["data"][0]["id"] == user["id"]


def test_update_key_and_user_limits_show_in_usage(gw: PortwayProcess) -> None:
    key = ok(call(gw, "POST", "/admin/keys", json={"name": "lim", "rpm": 5}), 201)
    patched = ok(
        call(gw, "PATCH", f"/admin/keys/{key['id']}", json={"rpm": None, "tpm": 100, "name": "lim2"})
    )
    assert (patched["rpm"], patched["tpm"], patched["name"]) == (None, 100, "lim2")
    usage = ok(call(gw, "GET", f"/admin/keys/{key['id']}/usage"))
    assert [(u["kind"], u["limit"], u["used"]) for u in usage["limits"]] == [("tpm", 100, 0)]
    user = ok(call(gw, "POST", "/admin/users", json={"email": "lim@example.com"}), 201)
    ok(call(gw, "PATCH", f"/admin/users/{user['id']}", json={"budget_usd": 3, "budget_period": "monthly"}))
    usage = ok(call(gw, "GET", f"/admin/users/{user['id']}/usage"))
    assert usage["scope"] == f"user:{user['id']}"
    assert [(u["kind"], u["period"], u["remaining"]) for u in usage["limits"]] == [("budget", "monthly", 3)]
    policies = ok(call(gw, "GET", "/admin/key-policies"))
    assert policies["object"] == "list"


def test_email_only_login_mode(upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = PortwayProcess(tmp_path, gateway_config(upstream), env={"PORTWAY_LOGIN_MODE": "email_only"})
    try:
        body = ok(login(proc, "New.Person@Example.com", None))
        token = body["access_token"]
        me = ok(HTTP.get(proc.base_url + "/me", headers=proc.headers(token)))
        assert me["user"]["email"] == "new.person@example.com" and me["user"]["has_password"] is False
        again = ok(login(proc, "new.person@example.com", None))
        assert (
            jwt.decode(again["access_token"], options={"verify_signature": False})["sub"] == me["user"]["id"]
        )
    finally:
        proc.stop()
