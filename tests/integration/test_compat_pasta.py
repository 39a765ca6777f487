"""Seed 001 (AI Pasta) served by portway: every request example of the seed replayed against a real portway
process whose `openrouter` provider is an OpenRouter-shaped fake upstream (its /models with prices and
modalities) and whose `hf` provider is the fake's Hugging Face side, with `compat.pasta: {enabled, auth:
none}` as the seed runs. Requests come through a trusted proxy (`X-Forwarded-For`), so each test is its
own client address for the seed's 30 requests a minute per IP. A second gateway on Postgres checks
`auth: key` and the history kept per caller."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.upstream import OPENROUTER_MODELS, FakeUpstream
from tests.integration.server import PortwayProcess, start_of_rate_window
from tests.integration.test_limits_gateway import create_key
from tests.integration.test_responses_api import wait_row

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

PRICE = {"input": 3.0, "output": 15.0}  # USD per 1M tokens, the operator's price for the seed's model


def config(listing: FakeUpstream, auth: str = "none") -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "routing": {"deadline": 4, "backoff_base": 0.01, "backoff_max": 0.02},
        "providers": {
            "openrouter": {"type": "openai", "base_url": listing.base_url, "api_keys": ["k-or"]},
            "hf": {
                "type": "huggingface",
                "base_url": listing.base_url,
                "api_keys": ["k-hf"],
                "options": {"inference_url": listing.url + "/hf-inference"},
            },
        },
        "pricing": {"openrouter/anthropic/claude-3-sonnet": PRICE},
        "compat": {"pasta": {"enabled": True, "auth": auth, "providers": ["openrouter", "hf"]}},
    }


@pytest.fixture(scope="module")
def listing() -> Iterator[FakeUpstream]:
    with FakeUpstream().start() as up:
        up.models_data = OPENROUTER_MODELS
        yield up


@pytest.fixture(scope="module")
def gw(listing: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("pasta"), config(listing))
    yield proc
    proc.stop()


def _client_ip() -> str:
    return f"10.1.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


@pytest.fixture
def http(gw: PortwayProcess) -> Iterator[httpx.Client]:
    headers = {"X-Forwarded-For": _client_ip()}
    with httpx.Client(base_url=gw.url, timeout=20, headers=headers) as client:
        yield client


def _json(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    return body


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    body = _json(resp, status)
    assert body["success"] is False
    assert isinstance(body["error"], str) and isinstance(body["details"], str)
    return body


SEED_CHAT = {
    "model": "anthropic/claude-3-sonnet",
    "messages": [{"role": "user", "content": "Hello!"}],
    "stream": True,
    "options": {"temperature": 0.7, "max_tokens": 1000},
}


def test_models_are_the_catalog_grouped_by_the_seeds_categories(http: httpx.Client) -> None:
    until = time.monotonic() + 15
    while True:  # the providers' lists are fetched in the background after start
        body = _json(http.get("/api/models"))
        if body["stats"]["byProvider"].get("openrouter", 0) >= len(OPENROUTER_MODELS):
            break
        assert time.monotonic() < until, body["stats"]
        time.sleep(0.05)
    assert body["success"] is True and isinstance(body["cached"], bool)
    models = body["models"]
    assert set(models) == {"all", "multimodal", "textOnly", "free", "paid", "byProvider"}
    assert set(models["byProvider"]) == {"openrouter", "hf"}
    ids = {m["id"] for m in models["all"]}
    assert {"openrouter/vendor/vision-pro", "openrouter/vendor/text-small:free"} <= ids
    assert "openrouter/vendor/vision-pro" in {m["id"] for m in models["multimodal"]}
    assert "openrouter/vendor/text-small:free" in {m["id"] for m in models["free"]}
    assert all(m["provider"] in ("openrouter", "hf") for m in models["all"])  # no aliases, no others
    stats = body["stats"]
    for name in ("total", "multimodal", "free", "paid"):
        assert isinstance(stats[name], int)
    assert stats["total"] == len(models["all"]) == stats["free"] + stats["paid"]
    assert stats["multimodal"] == len(models["multimodal"])


def test_chat_non_stream_answers_usage_and_cost(http: httpx.Client, listing: FakeUpstream) -> None:
    body = _json(http.post("/api/chat", json={**SEED_CHAT, "stream": False}))
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Echo: Hello!"}
    usage = body["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    cost = body["cost"]
    assert set(cost) == {"inputCost", "outputCost", "totalCost"}
    assert all(isinstance(v, float) for v in cost.values())
    assert cost["inputCost"] == pytest.approx(usage["prompt_tokens"] * PRICE["input"] / 1e6)
    assert cost["outputCost"] == pytest.approx(usage["completion_tokens"] * PRICE["output"] / 1e6)
    assert cost["totalCost"] == pytest.approx(cost["inputCost"] + cost["outputCost"])
    sent = listing.requests[-1]
    assert sent.model == "anthropic/claude-3-sonnet"  # the seed's OpenRouter id, to openrouter
    assert sent.body is not None and sent.body["temperature"] == 0.7 and sent.body["max_tokens"] == 1000


def test_chat_stream_is_data_json_chunks(http: httpx.Client) -> None:
    with http.stream("POST", "/api/chat", json=SEED_CHAT) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        raw = b"".join(resp.iter_bytes())
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert all(e.startswith(b"data: ") for e in events)
    chunks = [orjson.loads(e[6:]) for e in events if e != b"data: [DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "Echo: Hello!"


def test_chat_errors_in_the_seeds_shape(http: httpx.Client) -> None:
    body = _error(http.post("/api/chat", json={"model": "anthropic/claude-3-sonnet"}), 400)
    assert "messages" in body["details"]
    _error(http.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(http.post("/api/chat", json={**SEED_CHAT, "options": {"temperature": "hot"}}), 400)


def test_chat_history_save_get_and_sessions(http: httpx.Client) -> None:
    session = f"session-{secrets.token_hex(3)}"
    saved = {
        "userId": "user123",
        "sessionId": session,
        "message": {"content": "Hello", "isUser": True, "timestamp": "2025-01-01T00:00:00Z"},
    }
    body = _json(http.post("/api/chat-history", json=saved))
    assert body["success"] is True and body["sessionId"] == session and body["userId"] == "user123"
    reply = {"userId": "user123", "sessionId": session, "message": {"content": "Hi!", "isUser": False}}
    _json(http.post("/api/chat-history", json=reply))

    history = _json(http.get("/api/chat-history", params={"sessionId": session, "limit": 50}))
    assert history["success"] is True
    messages = history["messages"]
    assert [(m["content"], m["isUser"]) for m in messages] == [("Hello", True), ("Hi!", False)]
    assert messages[0]["timestamp"] == "2025-01-01T00:00:00.000Z"
    assert all(isinstance(m["timestamp"], str) for m in messages)
    last = _json(http.get("/api/chat-history", params={"sessionId": session, "limit": 1}))["messages"]
    assert [m["content"] for m in last] == ["Hi!"]  # the latest `limit` messages

    params = {"userId": "user123", "sessions": "true", "limit": 20}
    sessions = _json(http.get("/api/chat-history", params=params))["sessions"]
    mine = next(s for s in sessions if s["sessionId"] == session)
    assert mine["userId"] == "user123" and mine["messageCount"] == 2
    others = _json(http.get("/api/chat-history", params={**params, "userId": "someone-else"}))
    assert session not in {s["sessionId"] for s in others["sessions"]}
    unknown = _json(http.get("/api/chat-history", params={"sessionId": "never-saved"}))
    assert unknown["messages"] == []


def test_chat_history_bad_input(http: httpx.Client) -> None:
    _error(http.post("/api/chat-history", json={"userId": "u", "message": {"content": "x"}}), 400)
    bad_id = {"sessionId": "bad id!", "message": {"content": "x", "isUser": True}}
    _error(http.post("/api/chat-history", json=bad_id), 400)
    bad_ts = {"sessionId": "s-1", "message": {"content": "x", "timestamp": "yesterday"}}
    _error(http.post("/api/chat-history", json=bad_ts), 400)
    _error(http.get("/api/chat-history"), 400)
    _error(http.get("/api/chat-history", params={"sessionId": "s-1", "limit": "many"}), 400)


def test_health(http: httpx.Client) -> None:
    body = _json(http.get("/api/health"))
    assert body == {
        "status": "ok",
        "services": {"database": "connected", "openrouter": "configured", "hf": "configured"},
    }


def test_thirty_requests_a_minute_per_ip(gw: PortwayProcess) -> None:
    headers = {"X-Forwarded-For": _client_ip()}
    start_of_rate_window()  # all of them in one rpm window
    with httpx.Client(base_url=gw.url, timeout=20, headers=headers) as client:
        for _ in range(30):
            assert client.get("/api/health").status_code == 200
        refused = client.get("/api/models")  # every endpoint counts, and is refused alike
        body = _error(refused, 429)
        assert int(refused.headers["Retry-After"]) > 0 and body["retryAfter"] > 0
        assert body["code"] == "rate_limit_exceeded"
        assert _error(client.post("/api/chat", json=SEED_CHAT), 429)
    other = HTTP.get(gw.url + "/api/health", headers={"X-Forwarded-For": _client_ip()}, timeout=10)
    assert other.status_code == 200  # another address has its own count


def test_the_request_log_has_the_chat_and_its_cost(gw: PortwayProcess, http: httpx.Client) -> None:
    rid = "pasta-" + secrets.token_hex(4)
    body = _json(http.post("/api/chat", json={**SEED_CHAT, "stream": False}, headers={"x-request-id": rid}))
    row = wait_row(gw, rid)
    assert row["endpoint"] == "compat.pasta" and row["provider"] == "openrouter"
    assert row["cost_usd"] == pytest.approx(body["cost"]["totalCost"])


@pytest.mark.postgres
def test_auth_key_and_history_per_caller_on_postgres(
    listing: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> None:
    gw = PortwayProcess(
        tmp_path_factory.mktemp("pasta-pg"), config(listing, auth="key"), env={"PORTWAY_DATABASE_URL": pg_url}
    )
    try:
        saved = {"userId": "u1", "sessionId": "pg-session", "message": {"content": "kept", "isUser": True}}
        refused = HTTP.post(gw.url + "/api/chat-history", json=saved, timeout=10)
        assert refused.status_code == 401 and refused.json()["success"] is False
        _json(HTTP.post(gw.url + "/api/chat-history", json=saved, headers=gw.headers(), timeout=10))
        got = HTTP.get(gw.url + "/api/chat-history?sessionId=pg-session", headers=gw.headers(), timeout=10)
        assert [m["content"] for m in _json(got)["messages"]] == ["kept"]
        other = {"x-api-key": create_key(gw)}  # another caller sees nothing of it
        theirs = HTTP.get(gw.url + "/api/chat-history?sessionId=pg-session", headers=other, timeout=10)
        assert _json(theirs)["messages"] == []
        answer = HTTP.post(gw.url + "/api/chat", json={**SEED_CHAT, "stream": False}, headers=other)
        assert _json(answer)["cost"]["totalCost"] > 0
    finally:
        gw.stop()
