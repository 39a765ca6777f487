"""The response cache through a running portway (real SQLite; Redis in its own test) against the fake
upstream: a repeated deterministic request is answered without an upstream call (`x-portway-cache: hit`),
byte for byte; a stream and a non-stream request share the answer (replayed as SSE chunks the `openai` SDK
reads); requests sampled with temperature > 0 are not cached unless the client asks; each caller has its
own namespace; a hit is recorded at $0 with `cache_hit` and still counts against the caller's rate limit.
A key with `cache` on has it for every model (also with no `cache:` config at all); /v1/responses,
/v1/messages and /v1/completions answer `x-portway-cache` and honour `force` / `skip` as chat does."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from portway.protocols import messages as messages_protocol
from portway.protocols.chat_chunks import assemble, replay
from portway.providers.sse import encode_event
from portway.stores.sql.database import MIGRATIONS_DIR, create_engine, migrate
from portway.stores.sql.identity import IdentityStore
from tests import services
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess
from tests.integration.test_cli_server import cli_json
from tests.integration.test_limits_gateway import create_key
from tests.integration.test_responses_api import wait_row

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

PRICE = 1000.0  # USD per 1M tokens: a miss costs something, a hit nothing


def _config(upstream: FakeUpstream, store: str) -> dict[str, Any]:
    cfg = gateway_config(upstream)
    cfg["pricing"] = {"up/*": {"input": PRICE, "output": PRICE}}
    cfg["cache"] = {"enabled_for": ["direct", "single*", "claude-x"], "ttl_seconds": 60, "store": store}
    # /v1/messages passed through to an Anthropic upstream (its answer is not a chat completion)
    cfg["providers"]["claude"] = {"type": "anthropic", "base_url": upstream.url, "api_keys": ["k-claude"]}
    cfg["models"]["claude-x"] = ["claude/claude-haiku-4-5"]
    return cfg


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("cache"), _config(upstream, "database"))
    yield proc
    proc.stop()


def _stored(gw: PortwayProcess) -> int:
    con = sqlite3.connect(Path(gw.data_dir) / "portway.db")
    try:
        return int(con.execute("SELECT COUNT(*) FROM response_cache").fetchone()[0])
    finally:
        con.close()


def _wait_stored(count: Any, at_least: int, timeout: float = 15.0) -> None:
    """Cache writes happen after the answer, in the background: wait until the entry is there (a write
    takes milliseconds; the bound is for a loaded machine). Every test waits for each entry it makes, so
    the next test's count does not include a write still in flight."""
    until = time.monotonic() + timeout
    while count() < at_least:
        assert time.monotonic() < until, "the answer was never stored"
        time.sleep(0.02)


def _chat(gw: PortwayProcess, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    return HTTP.post(
        gw.base_url + "/chat/completions", json=body, headers={**gw.headers(key), **headers}, timeout=20
    )


def _calls(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path == "/v1/chat/completions")


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "direct", "messages": [{"role": "user", "content": text}], "temperature": 0, **extra}


def test_a_repeated_request_is_a_hit_without_an_upstream_call(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    before = _stored(gw)
    first = _chat(gw, _body("cache one", user="alice"), **{"x-request-id": "c-miss-1"})
    assert first.status_code == 200, first.text
    assert first.headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    # `user` and `metadata` do not change the answer: the same entry
    again = _chat(gw, _body("cache one", user="bob", metadata={"a": "b"}), **{"x-request-id": "c-hit-1"})
    assert again.status_code == 200
    assert again.headers["x-portway-cache"] == "hit"
    assert again.content == first.content  # the upstream's bytes, as first answered
    assert again.headers["x-portway-provider"] == "up" and again.headers["x-portway-model"] == "fake-model"
    assert _calls(upstream) == 1
    assert float(again.headers["x-portway-cost-usd"]) == 0
    miss, hit = wait_row(gw, "c-miss-1"), wait_row(gw, "c-hit-1")
    assert miss["cache_hit"] == 0 and miss["cost_usd"] > 0 and miss["attempts"] == 1
    assert hit["cache_hit"] == 1 and hit["cost_usd"] == 0 and hit["attempts"] == 0
    assert hit["status"] == 200 and hit["provider"] == "up" and hit["served_model"] == miss["served_model"]
    assert (
        hit["prompt_tokens"] == miss["prompt_tokens"]
        and hit["completion_tokens"] == miss["completion_tokens"]
    )


def test_a_different_request_is_a_miss(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    before = _stored(gw)
    assert _chat(gw, _body("cache two")).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _chat(gw, _body("cache two", max_tokens=5)).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 2)  # an entry of its own
    assert _calls(upstream) == 2


def test_a_stream_is_replayed_from_a_non_stream_answer(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    before = _stored(gw)
    first = _chat(gw, _body("cache three")).json()
    _wait_stored(lambda: _stored(gw), before + 1)
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=20)
    with sdk.chat.completions.with_streaming_response.create(
        **_body("cache three"), stream=True, stream_options={"include_usage": True}
    ) as raw:
        assert raw.headers["x-portway-cache"] == "hit"
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == first["usage"]["total_tokens"]
    assert _calls(upstream) == 1


def test_a_streamed_answer_serves_a_later_non_stream_request(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    before = _stored(gw)
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=20)
    with sdk.chat.completions.with_streaming_response.create(**_body("cache four"), stream=True) as raw:
        assert raw.headers["x-portway-cache"] == "miss"
        streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    _wait_stored(lambda: _stored(gw), before + 1)
    hit = _chat(gw, _body("cache four"))
    assert hit.headers["x-portway-cache"] == "hit"
    answer = hit.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": streamed}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["total_tokens"] > 0
    assert _calls(upstream) == 1


def test_a_stream_the_client_leaves_right_after_done_is_kept(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    """A client closes the connection as soon as it has read [DONE], which may cancel the relay while it
    still does its bookkeeping: the answer it passed on whole is kept all the same (it was lost before)."""
    for i in range(8):  # each round a race; lost before, now and then (more often on a loaded machine)
        before = _stored(gw)
        with httpx.Client(timeout=20) as client:
            body = {**_body(f"leave after done {i}"), "stream": True}
            url = gw.base_url + "/chat/completions"
            with client.stream("POST", url, json=body, headers=gw.headers()) as r:
                assert r.headers["x-portway-cache"] == "miss"
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    if line == "data: [DONE]":
                        break  # and leave: the connection is closed before the end of the chunked body
                assert lines[-1] == "data: [DONE]"
        _wait_stored(lambda: _stored(gw), before + 1)
    assert _calls(upstream) == 8


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_sampled_requests_are_not_cached(
    gw: PortwayProcess, upstream: FakeUpstream, temperature: float | None
) -> None:
    body = _body(f"sampled {temperature}")
    if temperature is None:
        del body["temperature"]  # sampled at the provider's default (1)
    else:
        body["temperature"] = temperature
    for _ in range(2):
        r = _chat(gw, body)
        assert r.status_code == 200 and "x-portway-cache" not in r.headers
    assert _calls(upstream) == 2


def test_force_caches_a_sampled_request_and_skip_bypasses(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    body = _body("forced", temperature=0.9)
    before = _stored(gw)
    assert _chat(gw, body, **{"x-portway-cache": "force"}).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _chat(gw, body, **{"x-portway-cache": "force"}).headers["x-portway-cache"] == "hit"
    skipped = _chat(gw, _body("forced", temperature=0.9), **{"x-portway-cache": "skip"})
    assert "x-portway-cache" not in skipped.headers
    assert _calls(upstream) == 2


def test_models_without_the_cache_are_never_cached(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    body = {**_body("other model"), "model": "chain"}
    for _ in range(2):
        assert "x-portway-cache" not in _chat(gw, body).headers
    assert _calls(upstream) >= 2


def test_another_caller_does_not_see_the_answer(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    before = _stored(gw)
    assert _chat(gw, _body("private")).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    other = create_key(gw)
    assert _chat(gw, _body("private"), other).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 2)  # in its own namespace
    assert _calls(upstream) == 2


def test_a_glob_enables_the_cache(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    body = {**_body("glob"), "model": "single"}
    before = _stored(gw)
    assert _chat(gw, body).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _chat(gw, body).headers["x-portway-cache"] == "hit"


def test_failed_answers_are_not_cached(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    upstream.script(["400"], model="fake-model")
    body = _body("refused once")
    assert _chat(gw, body).status_code == 400
    before = _stored(gw)
    ok = _chat(gw, body)
    assert ok.status_code == 200 and ok.headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)


def test_a_hit_counts_against_the_rate_limit(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    key = create_key(gw, rpm=2)
    before = _stored(gw)
    assert _chat(gw, _body("limited"), key).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _chat(gw, _body("limited"), key).headers["x-portway-cache"] == "hit"
    refused = _chat(gw, _body("limited"), key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert _calls(upstream) == 1


@pytest.mark.redis
def test_the_redis_store(upstream: FakeUpstream, tmp_path: Path) -> None:
    import redis

    prefix = "portway:cache:"
    r = redis.Redis.from_url(services.REDIS_URL)
    stale = list(r.scan_iter(prefix + "*"))
    if stale:
        r.delete(*stale)
    env = {"PORTWAY_REDIS_URL": services.REDIS_URL}
    proc = PortwayProcess(tmp_path / "gw", _config(upstream, "auto"), env=env)  # auto: Redis when set
    try:
        body = _body("redis cached")
        assert _chat(proc, body).headers["x-portway-cache"] == "miss"
        _wait_stored(lambda: len(list(r.scan_iter(prefix + "*"))), 1)
        (key,) = list(r.scan_iter(prefix + "*"))
        assert 0 < r.pttl(key) <= 60_000  # cache.ttl_seconds
        hit = _chat(proc, body)
        assert hit.headers["x-portway-cache"] == "hit"
        assert _calls(upstream) == 1
    finally:
        proc.stop()
        leftover = list(r.scan_iter(prefix + "*"))
        if leftover:
            r.delete(*leftover)
        r.close()


# -- per key: a virtual key with `cache` on ---------------------------------------------------------------

UNCACHED = "up/fake-model"  # not in cache.enabled_for: only a key with `cache` gets it from the cache


def _key(gw: PortwayProcess, **fields: Any) -> tuple[str, str]:
    made = HTTP.post(gw.url + "/admin/keys", json={"name": "cached", **fields}, headers=gw.headers())
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["id"]


def test_a_key_with_cache_on_has_it_for_every_model(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    key, key_id = _key(gw, cache=True)
    shown = HTTP.get(gw.url + f"/admin/keys/{key_id}", headers=gw.headers()).json()
    assert shown["cache"] is True
    listed = HTTP.get(gw.url + "/admin/keys", params={"limit": 500}, headers=gw.headers()).json()
    assert {k["id"]: k["cache"] for k in listed["data"]}[key_id] is True
    me = HTTP.get(gw.base_url + "/me", headers=gw.headers(key)).json()
    assert me["key"]["cache"] is True
    body = {**_body("per key"), "model": UNCACHED}
    before = _stored(gw)
    assert _chat(gw, body, key).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    hit = _chat(gw, body, key)
    assert hit.status_code == 200 and hit.headers["x-portway-cache"] == "hit"
    assert _calls(upstream) == 1
    # the temperature rule still applies, and so does skip
    sampled = {**body, "temperature": 0.5}
    assert "x-portway-cache" not in _chat(gw, sampled, key).headers
    assert "x-portway-cache" not in _chat(gw, body, key, **{"x-portway-cache": "skip"}).headers
    assert _calls(upstream) == 3


def test_a_key_without_cache_does_not_get_it(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    key, key_id = _key(gw)
    assert HTTP.get(gw.url + f"/admin/keys/{key_id}", headers=gw.headers()).json()["cache"] is False
    body = {**_body("no key cache"), "model": UNCACHED}
    for who in (key, None):  # a key without it, and the master key
        for _ in range(2):
            assert "x-portway-cache" not in _chat(gw, body, who).headers
    assert _calls(upstream) == 4


def test_turning_a_keys_cache_off_stops_hits(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    key, key_id = _key(gw, cache=True)
    body = {**_body("turned off"), "model": UNCACHED}
    before = _stored(gw)
    assert _chat(gw, body, key).headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _chat(gw, body, key).headers["x-portway-cache"] == "hit"
    off = HTTP.patch(gw.url + f"/admin/keys/{key_id}", json={"cache": False}, headers=gw.headers())
    assert off.status_code == 200 and off.json()["cache"] is False
    after = _chat(gw, body, key)
    assert after.status_code == 200 and "x-portway-cache" not in after.headers
    assert _calls(upstream) == 2
    null = HTTP.patch(gw.url + f"/admin/keys/{key_id}", json={"cache": None}, headers=gw.headers())
    assert null.status_code == 400 and null.json()["error"]["type"] == "invalid_request_error"


def test_the_cli_sets_a_keys_cache(gw: PortwayProcess) -> None:
    created = cli_json(gw, "keys", "create", "--name", "cli-cache", "--cache")
    assert created["cache"] is True
    assert cli_json(gw, "keys", "update", created["id"], "--no-cache")["cache"] is False
    assert cli_json(gw, "keys", "create", "--name", "cli-default")["cache"] is False


def test_a_key_has_the_cache_without_any_cache_config(upstream: FakeUpstream, tmp_path: Path) -> None:
    """No `cache:` section: its defaults apply (ttl 300 s, store auto: the database here)."""
    cfg = gateway_config(upstream)
    proc = PortwayProcess(tmp_path / "gw", cfg)
    try:
        key, _ = _key(proc, cache=True)
        body = _body("no config")
        assert "x-portway-cache" not in _chat(proc, body).headers  # the master key: no cache
        assert _chat(proc, body, key).headers["x-portway-cache"] == "miss"
        _wait_stored(lambda: _stored(proc), 1)
        assert _chat(proc, body, key).headers["x-portway-cache"] == "hit"
        assert _calls(upstream) == 2
    finally:
        proc.stop()


# -- /v1/responses, /v1/messages, /v1/completions ---------------------------------------------------------


def _protocol_body(path: str, text: str) -> dict[str, Any]:
    if path == "/responses":
        return {"model": "direct", "input": text, "temperature": 0}
    if path == "/messages":
        messages = [{"role": "user", "content": text}]
        return {"model": "direct", "max_tokens": 50, "temperature": 0, "messages": messages}
    return {"model": "direct", "prompt": text, "temperature": 0}


def _text(path: str, answer: dict[str, Any]) -> str:
    if path == "/responses":
        return str(answer["output"][0]["content"][0]["text"])
    if path == "/messages":
        return str(answer["content"][0]["text"])
    return str(answer["choices"][0]["text"])


def _post(gw: PortwayProcess, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return HTTP.post(gw.base_url + path, json=body, headers={**gw.headers(), **headers}, timeout=20)


@pytest.mark.parametrize("path", ["/responses", "/messages", "/completions"])
def test_other_chat_endpoints_answer_the_cache_header(
    gw: PortwayProcess, upstream: FakeUpstream, path: str
) -> None:
    body = _protocol_body(path, f"protocol {path}")
    before = _stored(gw)
    first = _post(gw, path, body)
    assert first.status_code == 200, first.text
    assert first.headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    again = _post(gw, path, body)
    assert again.status_code == 200 and again.headers["x-portway-cache"] == "hit"
    assert float(again.headers["x-portway-cost-usd"]) == 0
    assert _text(path, again.json()) == _text(path, first.json())
    # a streaming request of the same body is answered from it, in the endpoint's own events
    with HTTP.stream(
        "POST", gw.base_url + path, json={**body, "stream": True}, headers=gw.headers(), timeout=20
    ) as streamed:
        assert streamed.headers["x-portway-cache"] == "hit"
        events = streamed.read()
    assert _text(path, first.json()).split()[-1].encode() in events
    skipped = _post(gw, path, body, **{"x-portway-cache": "skip"})
    assert skipped.status_code == 200 and "x-portway-cache" not in skipped.headers
    assert _calls(upstream) == 2  # the first request and the skipped one


def test_force_caches_a_sampled_request_on_another_endpoint(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    body = {**_protocol_body("/completions", "forced completion"), "temperature": 0.8}
    assert "x-portway-cache" not in _post(gw, "/completions", body).headers
    before = _stored(gw)
    assert (
        _post(gw, "/completions", body, **{"x-portway-cache": "force"}).headers["x-portway-cache"] == "miss"
    )
    _wait_stored(lambda: _stored(gw), before + 1)
    assert _post(gw, "/completions", body, **{"x-portway-cache": "Force"}).headers["x-portway-cache"] == "hit"
    assert _calls(upstream) == 2


def test_a_passed_through_messages_answer_is_not_kept(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    body = {**_protocol_body("/messages", "passed through"), "model": "claude-x"}
    before = _stored(gw)
    for _ in range(2):
        r = _post(gw, "/messages", body, **{"anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text
        assert r.headers["x-portway-cache"] == "miss" and r.json()["type"] == "message"
    assert sum(1 for r in upstream.requests if r.path == "/v1/messages") == 2
    time.sleep(0.3)  # a write would have landed by now
    assert _stored(gw) == before


def test_a_hit_on_messages_is_translated_whoever_served_it(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    """An answer kept from an Anthropic target on the chat route is a chat completion: a /v1/messages hit
    on it is translated, not passed on as if it were Anthropic's bytes."""
    body = {**_protocol_body("/messages", "kept from claude"), "model": "claude-x"}
    before = _stored(gw)
    first = _chat(gw, messages_protocol.chat_request(body))  # the same request, as chat
    assert first.status_code == 200 and first.headers["x-portway-cache"] == "miss"
    _wait_stored(lambda: _stored(gw), before + 1)
    hit = _post(gw, "/messages", body)
    assert hit.status_code == 200 and hit.headers["x-portway-cache"] == "hit"
    assert hit.headers["x-portway-provider"] == "claude"
    answer = hit.json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["content"][0]["text"] == first.json()["choices"][0]["message"]["content"]
    assert len(upstream.requests) == 1


# -- migration 0013 (api_keys.cache) ---------------------------------------------------------------------


def _alembic(connection: sa.Connection, revision: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(cfg, revision)


def _columns(connection: sa.Connection) -> list[str]:
    return [c["name"] for c in sa.inspect(connection).get_columns("api_keys")]


async def _check_migration(url: str) -> None:
    """A key made before 0013 has the cache off after it; the column can be set, and goes on downgrade."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0012")
            await conn.execute(
                sa.text(
                    "INSERT INTO api_keys (id, key_hash, display_prefix, name, created_at, budget_period)"
                    " VALUES ('key_old', 'h', 'sk-pw-x', 'old', 1.0, 'total')"
                )
            )
        await migrate(engine)
        store = IdentityStore(engine)
        old = await store.get_key("key_old")
        assert old is not None and old.cache is False
        changed = await store.update_key("key_old", {"cache": True})
        assert changed is not None and changed.cache is True
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0012", True)
            assert "cache" not in await conn.run_sync(_columns)
            assert (await conn.execute(sa.text("SELECT name FROM api_keys"))).scalar() == "old"
    finally:
        await engine.dispose()


def test_migration_0013_on_sqlite(tmp_path: Path) -> None:
    asyncio.run(_check_migration(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"))


def test_migration_0013_on_postgres(pg_url: str) -> None:
    asyncio.run(_check_migration(pg_url))


# -- the two shapes of an answer (protocols/chat_chunks.py) ----------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return encode_event(
        {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [choice]}
    )


def test_a_streamed_tool_call_is_assembled() -> None:
    events = [
        _chunk({"role": "assistant", "content": None}),
        _chunk(
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_"}}]}
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    completion = assemble(events)
    assert completion is not None
    assert completion["object"] == "chat.completion" and completion["id"] == "c1"
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    # and back: the replayed chunks assemble to the same answer
    again = assemble(replay(completion, include_usage=False))
    assert again is not None and again["choices"] == completion["choices"]


def test_an_incomplete_or_failed_stream_is_not_an_answer() -> None:
    assert assemble([_chunk({"content": "half"})]) is None  # no finish_reason
    error = encode_event({"error": {"message": "cut", "type": "upstream_error", "code": "upstream_error"}})
    assert assemble([_chunk({"content": "x"}), error]) is None
    assert assemble([b"data: {not json\n\n"]) is None
