"""Seed 003 (GenZ AI) served by portway: every request example of the seed replayed against a real portway
process (the fake upstream behind the tiers' aliases, a fake SearxNG for web search), its "Testing Locally"
sequence (login -> quota -> chat) first. The seed logs in by email alone: `PORTWAY_LOGIN_MODE=email_only`;
a second gateway checks that portway's default login asks for the password. Requests come through a
trusted proxy (`X-Forwarded-For`), so each test is its own address for the 60 requests a minute per IP."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.searxng import FakeSearxng
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess, start_of_rate_window
from tests.integration.test_responses_api import wait_row

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

QUOTA = 3
JSON = {"Content-Type": "application/json"}


def config(up: FakeUpstream, searxng: FakeSearxng) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "routing": {"deadline": 4, "backoff_base": 0.01, "backoff_max": 0.02},
        "status": {"probe_interval_seconds": 1, "probe_timeout": 1},
        "providers": {
            "groq": {"type": "openai", "base_url": up.base_url, "api_keys": ["k-groq"]},
            "openrouter": {"type": "openai", "base_url": up.base_url, "api_keys": ["k-or"]},
        },
        "models": {
            "fast": ["groq/llama-3.1-8b-instant"],
            "balanced": ["groq/llama-3.1-70b", "openrouter/openai/gpt-4o-mini"],
            "smart": ["openrouter/openai/gpt-4o-mini", "groq/llama-3.1-70b"],
        },
        "search": {"backend": "searxng", "url": searxng.url + "/", "timeout": 2},
        "compat": {"genz": {"enabled": True, "daily_quota": QUOTA}},
    }


@pytest.fixture(scope="module")
def searxng() -> Iterator[FakeSearxng]:
    with FakeSearxng() as fake:
        yield fake


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, searxng: FakeSearxng, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortwayProcess]:
    env = {"PORTWAY_LOGIN_MODE": "email_only", "PORTWAY_ENVIRONMENT": "development"}
    proc = PortwayProcess(tmp_path_factory.mktemp("genz"), config(upstream, searxng), env=env)
    yield proc
    proc.stop()


def _client_ip() -> str:
    return f"10.3.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


@pytest.fixture
def http(gw: PortwayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20, headers={"X-Forwarded-For": _client_ip()}) as client:
        yield client


def _json(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def _login(http: httpx.Client, email: str | None = None) -> dict[str, str]:
    email = email or f"user-{secrets.token_hex(4)}@example.com"
    body = _json(http.post("/api/v1/auth/login", headers=JSON, json={"email": email}))
    return {"Authorization": f"Bearer {body['access_token']}"}


def _chat(http: httpx.Client, auth: dict[str, str], **body: Any) -> httpx.Response:
    payload = {"prompt": "Hello!", "model": "fast", "stream": True, **body}
    return http.post("/api/v1/chat", headers={**JSON, **auth}, json=payload)


def _tokens(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/event-stream"
    events = [e for e in resp.content.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), events
    tokens = [orjson.loads(e[6:]) for e in events]
    assert all(isinstance(t, str) for t in tokens)
    return tokens


def test_the_seeds_local_test_sequence(http: httpx.Client, upstream: FakeUpstream) -> None:
    # 2. Get token
    login = _json(http.post("/api/v1/auth/login", headers=JSON, json={"email": "test@example.com"}))
    assert set(login) == {"access_token", "token_type", "expires_in"}
    assert login["token_type"] == "bearer" and login["expires_in"] == 86400
    assert login["access_token"].count(".") == 2  # a JWT
    auth = {"Authorization": f"Bearer {login['access_token']}"}
    # 3. Check quota
    quota = _json(http.get("/api/v1/quota", headers=auth))
    assert set(quota) == {"used", "limit", "remaining", "resets_at", "reset_time_utc"}
    assert quota["limit"] == QUOTA and quota["used"] + quota["remaining"] == QUOTA
    assert quota["resets_at"].endswith("T00:00:00Z") and quota["reset_time_utc"] == "00:00 UTC"
    # 4. Send chat message: `data: "token"` lines
    tokens = _tokens(_chat(http, auth))
    assert len(tokens) > 1 and "".join(tokens) == "Echo: Hello!"
    assert upstream.requests[-1].model == "llama-3.1-8b-instant"  # the fast tier's alias
    after = _json(http.get("/api/v1/quota", headers=auth))
    assert after["used"] == quota["used"] + 1 and after["remaining"] == quota["remaining"] - 1
    # 5. Check provider status (no token)
    assert isinstance(_json(http.get("/api/v1/status")), list)


def test_daily_quota_exceeded(http: httpx.Client) -> None:
    auth = _login(http)
    for _ in range(QUOTA):
        _tokens(_chat(http, auth, stream=True))
    refused = _chat(http, auth)
    assert _json(refused, 429) == {"error": "Daily quota exceeded", "used": QUOTA, "limit": QUOTA}
    assert int(refused.headers["Retry-After"]) > 0
    quota = _json(http.get("/api/v1/quota", headers=auth))  # reading the quota does not spend it
    assert quota["used"] == QUOTA and quota["remaining"] == 0


def test_chat_without_stream_and_other_tiers(gw: PortwayProcess, http: httpx.Client) -> None:
    auth = _login(http)
    rid = "genz-" + secrets.token_hex(4)
    resp = http.post(
        "/api/v1/chat",
        headers={**JSON, **auth, "x-request-id": rid},
        json={"prompt": "What is AI?", "model": "smart", "stream": False},
    )
    body = _json(resp)
    assert body["response"] == "Echo: What is AI?" and body["model"] == "smart"
    assert body["provider"] == "openrouter" and isinstance(body["usage"]["total_tokens"], int)
    row = wait_row(gw, rid)
    assert row["endpoint"] == "compat.genz" and row["requested_model"] == "smart"
    assert row["principal"].startswith("user:")
    assert "".join(_tokens(_chat(http, auth, model="balanced", prompt="Hi"))) == "Echo: Hi"


def test_models_lists_the_tiers(http: httpx.Client) -> None:
    body = _json(http.get("/api/v1/models", headers=_login(http)))
    models = {m["id"]: m for m in body["models"]}
    assert list(models) == ["fast", "balanced", "smart"]
    for m in models.values():
        assert set(m) == {"id", "name", "provider", "description", "available"}
        assert isinstance(m["name"], str) and isinstance(m["description"], str)
        assert m["available"] is True
    assert models["fast"]["name"] == "Fast ⚡" and models["fast"]["provider"] == "groq"
    assert models["smart"]["provider"] == "openrouter"


def test_status_lists_each_provider(http: httpx.Client) -> None:
    until = time.monotonic() + 15
    while True:  # uptime is measured by the checks written each probe interval
        rows = _json(http.get("/api/v1/status"))
        if rows and all(r["uptime"] is not None for r in rows):
            break
        assert time.monotonic() < until, rows
        time.sleep(0.2)
    assert [r["provider"] for r in rows] == ["groq", "openrouter"]
    for row in rows:
        assert set(row) == {"provider", "status", "uptime", "last_checked"}
        assert row["status"] == "up" and isinstance(row["uptime"], float)
        assert 0 <= row["uptime"] <= 100 and row["last_checked"].endswith("Z")


def test_web_search(http: httpx.Client) -> None:
    resp = http.get("/api/v1/web-search?q=machine+learning", headers=_login(http))
    body = _json(resp)
    assert body["status"] == "success" and body["source"] == "searxng"
    assert body["query"] == "machine learning"
    assert body["results"] and all(set(r) == {"title", "url"} for r in body["results"])
    assert body["results"][0]["url"] == "https://example.org/machine-learning/0"
    _json(http.get("/api/v1/web-search", headers=_login(http)), 400)
    _json(http.get("/api/v1/web-search?q=x"), 401)


def test_health_and_ready(http: httpx.Client) -> None:
    health = _json(http.get("/health"))
    assert health["status"] == "healthy" and isinstance(health["version"], str)
    assert isinstance(health["service"], str)
    ready = _json(http.get("/ready"))
    assert ready["ready"] is True and ready["environment"] == "development"
    assert ready["checks"]["database"] == "ok"  # portway's own fields are still there


def test_errors(gw: PortwayProcess, http: httpx.Client) -> None:
    auth = _login(http)
    for resp in (
        http.post("/api/v1/chat", headers=JSON, json={"prompt": "hi"}),
        http.get("/api/v1/quota", headers={"Authorization": "Bearer not.a.jwt"}),
        http.get("/api/v1/quota", headers=gw.headers()),  # the master key is not a user
    ):
        assert isinstance(_json(resp, 401)["error"], str)
    assert "model" in _json(_chat(http, auth, model="genius"), 400)["error"]
    assert "prompt" in _json(_chat(http, auth, prompt=""), 400)["error"]
    bad = http.post("/api/v1/auth/login", headers=JSON, json={"email": "not an email"})
    assert isinstance(_json(bad, 400)["error"], str)
    assert _json(http.post("/api/v1/auth/login", headers=JSON, json={}), 400)["error"]


def test_sixty_requests_a_minute_per_ip(gw: PortwayProcess) -> None:
    start_of_rate_window()  # all 60 in one rpm window
    with httpx.Client(base_url=gw.url, timeout=20, headers={"X-Forwarded-For": _client_ip()}) as client:
        auth = _login(client)  # one of the 60
        for _ in range(59):
            assert client.get("/api/v1/quota", headers=auth).status_code == 200
        refused = client.get("/api/v1/status")
        assert _json(refused, 429)["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) > 0


def test_default_login_asks_for_the_password(
    upstream: FakeUpstream, searxng: FakeSearxng, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gw = PortwayProcess(tmp_path_factory.mktemp("genz-pw"), config(upstream, searxng))
    try:
        login = gw.url + "/api/v1/auth/login"
        email_only = HTTP.post(login, json={"email": "test@example.com"}, timeout=10)
        assert "password" in _json(email_only, 400)["error"]
        user = {"email": "pw@example.com", "password": "correct horse battery"}
        created = HTTP.post(gw.url + "/admin/users", json=user, headers=gw.headers(), timeout=10)
        assert created.status_code == 201, created.text
        assert _json(HTTP.post(login, json={**user, "password": "wrong"}, timeout=10), 401)["error"]
        token = _json(HTTP.post(login, json=user, timeout=10))["access_token"]
        quota = HTTP.get(gw.url + "/api/v1/quota", headers={"Authorization": f"Bearer {token}"})
        assert _json(quota)["limit"] == QUOTA
    finally:
        gw.stop()
