"""Chat history through a running portway (SQLite, and Postgres under the postgres marker): /v1/sessions
create / list / get (paged) / delete, completions that name a session (x-portway-session or
metadata.session_id) appending their turn, streamed answers assembled from the relayed stream, the
optional prepend, another principal's 404, bad ids, the per-owner cap, and what the upstream was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from portway.config import HistoryConfig
from portway.errors import NotFound, SessionLimitReached, ValidationError
from portway.services.history import HistoryService
from portway.stores.sql.database import Database
from portway.stores.sql.sessions import SessionStore
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

CAP = 4  # history.max_sessions_per_owner: each test makes its own key, so owners never share the cap


def _config(upstream: FakeUpstream) -> dict[str, Any]:
    cfg = gateway_config(upstream)
    cfg["history"] = {"max_sessions_per_owner": CAP, "max_message_bytes": 4096}
    return cfg


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("sessions"), _config(upstream))
    yield proc
    proc.stop()


def _new_key(gw: PortwayProcess) -> dict[str, str]:
    made = HTTP.post(gw.url + "/admin/keys", json={"name": "history"}, headers=gw.headers())
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['key']}"}


@pytest.fixture
def key(gw: PortwayProcess) -> dict[str, str]:
    return _new_key(gw)


def _chat(
    gw: PortwayProcess,
    auth: dict[str, str],
    messages: list[dict[str, Any]],
    *,
    session: str | None = None,
    model: str = "direct",
    **extra: Any,
) -> httpx.Response:
    headers = {**auth, **({"x-portway-session": session} if session else {})}
    headers.update(extra.pop("headers", {}))
    body = {"model": model, "messages": messages, **extra}
    return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=10)


def _get(gw: PortwayProcess, auth: dict[str, str], sid: str, **params: Any) -> httpx.Response:
    return HTTP.get(f"{gw.base_url}/sessions/{sid}", params=params, headers=auth)


def _messages(gw: PortwayProcess, auth: dict[str, str], sid: str) -> list[dict[str, Any]]:
    found = _get(gw, auth, sid, limit=500)
    assert found.status_code == 200, found.text
    return [{"role": m["role"], "content": m["content"]} for m in found.json()["messages"]]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _sent(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [r.body or {} for r in upstream.requests if r.path == "/v1/chat/completions"]


def test_create_list_get_delete(gw: PortwayProcess, key: dict[str, str]) -> None:
    made = HTTP.post(gw.base_url + "/sessions", json={"title": "Trip", "metadata": {"k": 1}}, headers=key)
    assert made.status_code == 201, made.text
    session = made.json()
    assert session["object"] == "chat.session" and session["id"].startswith("sess_")
    assert (session["title"], session["metadata"], session["message_count"]) == ("Trip", {"k": 1}, 0)
    own = HTTP.post(gw.base_url + "/sessions", json={"id": "mine-1"}, headers=key)
    assert own.status_code == 201
    again = HTTP.post(gw.base_url + "/sessions", json={"id": "mine-1", "title": "x"}, headers=key)
    assert again.status_code == 200 and again.json()["title"] is None  # the existing one, unchanged

    listed = HTTP.get(gw.base_url + "/sessions", headers=key).json()
    assert {s["id"] for s in listed["data"]} == {session["id"], "mine-1"} and listed["has_more"] is False
    page = HTTP.get(gw.base_url + "/sessions", params={"limit": 1}, headers=key).json()
    assert len(page["data"]) == 1 and page["has_more"] is True

    got = _get(gw, key, session["id"])
    assert got.status_code == 200 and got.json()["messages"] == [] and got.json()["has_more"] is False
    gone = HTTP.delete(f"{gw.base_url}/sessions/{session['id']}", headers=key)
    assert gone.json() == {"id": session["id"], "object": "chat.session.deleted", "deleted": True}
    for response in (_get(gw, key, session["id"]), HTTP.delete(f"{gw.base_url}/sessions/x1", headers=key)):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_completion_appends_its_turn(gw: PortwayProcess, key: dict[str, str], upstream: FakeUpstream) -> None:
    first = _chat(gw, key, [{"role": "system", "content": "Be brief."}, _user("hello there")], session="t-1")
    assert first.status_code == 200, first.text
    answer = first.json()["choices"][0]["message"]["content"]
    assert answer == "Echo: hello there"
    # The client sends the whole conversation: only what follows the last assistant message is new.
    history = [_user("hello there"), {"role": "assistant", "content": answer}, _user("and again")]
    assert _chat(gw, key, history, session="t-1").status_code == 200
    assert _messages(gw, key, "t-1") == [
        _user("hello there"),
        {"role": "assistant", "content": "Echo: hello there"},
        _user("and again"),
        {"role": "assistant", "content": "Echo: and again"},
    ]
    session = _get(gw, key, "t-1").json()
    assert session["title"] == "hello there" and session["message_count"] == 4
    assert [m["position"] for m in session["messages"]] == [1, 2, 3, 4]
    assert all("x-portway-session" not in r.headers for r in upstream.requests)


def test_metadata_session_id_is_not_sent_upstream(
    gw: PortwayProcess, key: dict[str, str], upstream: FakeUpstream
) -> None:
    one = _chat(gw, key, [_user("via metadata")], metadata={"session_id": "m-1"})
    two = _chat(gw, key, [_user("keeps the rest")], metadata={"session_id": "m-1", "tag": "x"})
    assert one.status_code == two.status_code == 200
    bodies = _sent(upstream)
    assert "metadata" not in bodies[0] and bodies[1]["metadata"] == {"tag": "x"}
    assert [m["content"] for m in _messages(gw, key, "m-1")] == [
        "via metadata",
        "Echo: via metadata",
        "keeps the rest",
        "Echo: keeps the rest",
    ]


def test_streamed_answer_is_assembled(gw: PortwayProcess, key: dict[str, str]) -> None:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=key["Authorization"][7:], max_retries=0, timeout=10)
    stream = sdk.chat.completions.create(
        model="direct",
        messages=[{"role": "user", "content": "stream me some words"}],
        stream=True,
        extra_headers={"x-portway-session": "st-1"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Echo: stream me some words"
    assert _messages(gw, key, "st-1") == [
        _user("stream me some words"),
        {"role": "assistant", "content": text},
    ]


def test_failed_or_broken_answers_append_nothing(gw: PortwayProcess, key: dict[str, str]) -> None:
    failed = _chat(gw, key, [_user("nobody answers")], session="f-1", model="ghost")
    assert failed.status_code == 503
    assert _get(gw, key, "f-1").status_code == 404  # the session was never created
    assert _chat(gw, key, [_user("first")], session="f-2").status_code == 200
    with HTTP.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "up/fake-model@cut", "messages": [_user("cut me")], "stream": True},
        headers={**key, "x-portway-session": "f-2"},
    ) as cut:
        body = b"".join(cut.iter_bytes())
    assert b"upstream_error" in body
    assert _messages(gw, key, "f-2") == [_user("first"), {"role": "assistant", "content": "Echo: first"}]


def test_another_principals_session_is_404(gw: PortwayProcess, key: dict[str, str]) -> None:
    assert _chat(gw, key, [_user("private")], session="own-1").status_code == 200
    other = _new_key(gw)
    for response in (
        _chat(gw, other, [_user("let me in")], session="own-1"),
        _chat(gw, other, [_user("let me in")], metadata={"session_id": "own-1"}),
        _get(gw, other, "own-1"),
        HTTP.delete(gw.base_url + "/sessions/own-1", headers=other),
        HTTP.post(gw.base_url + "/sessions", json={"id": "own-1"}, headers=other),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert len(_messages(gw, key, "own-1")) == 2
    assert HTTP.get(gw.base_url + "/sessions", headers=other).json()["data"] == []
    # The master key is a principal of its own, not an administrator of everybody's history.
    assert _get(gw, gw.headers(), "own-1").status_code == 404


def test_bad_ids_and_auth(gw: PortwayProcess, key: dict[str, str]) -> None:
    for bad in ("has space", "x" * 65, "-leading", "semi;colon"):
        r = _chat(gw, key, [_user("hi")], session=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "session_id", bad
    assert _chat(gw, key, [_user("hi")], metadata={"session_id": 7}).status_code == 400
    assert _get(gw, key, "bad%20id").status_code == 400
    made = HTTP.post(gw.base_url + "/sessions", json={"id": "no/slash"}, headers=key)
    assert made.status_code == 400
    assert (
        _chat(gw, key, [_user("hi")], session="ok-1", headers={"x-portway-history": "maybe"}).status_code
        == 400
    )
    assert HTTP.get(gw.base_url + "/sessions").status_code == 401
    assert HTTP.get(gw.base_url + "/sessions", params={"limit": 0}).status_code == 401  # auth comes first
    big = _chat(gw, key, [_user("x" * 5000)], session="ok-1")
    assert big.status_code == 400 and "history.max_message_bytes" in big.json()["error"]["message"]


def test_paging(gw: PortwayProcess, key: dict[str, str]) -> None:
    for word in ("one", "two", "three"):
        assert _chat(gw, key, [_user(word)], session="p-1").status_code == 200

    def page(**params: Any) -> tuple[list[int], bool]:
        found = _get(gw, key, "p-1", **params)
        assert found.status_code == 200, found.text
        return [m["position"] for m in found.json()["messages"]], found.json()["has_more"]

    assert page(limit=2) == ([1, 2], True)
    assert page(limit=2, after=2) == ([3, 4], True)
    assert page(limit=2, after=4) == ([5, 6], False)
    assert page(limit=2, before=5) == ([3, 4], True)
    assert page(limit=2, before=3) == ([1, 2], False)
    assert page(limit=3, offset=4) == ([5, 6], False)
    both = _get(gw, key, "p-1", after=1, before=4)
    assert both.status_code == 400
    assert _get(gw, key, "p-1", limit=501).status_code == 400


def test_prepend_adds_stored_messages(
    gw: PortwayProcess, key: dict[str, str], upstream: FakeUpstream
) -> None:
    prepend = {"x-portway-history": "prepend"}
    assert _chat(gw, key, [_user("my name is Ada")], session="pp-1", headers=prepend).status_code == 200
    system = {"role": "system", "content": "Be brief."}
    assert _chat(gw, key, [system, _user("who am I?")], session="pp-1", headers=prepend).status_code == 200
    sent = _sent(upstream)[-1]["messages"]
    assert sent == [
        system,
        _user("my name is Ada"),
        {"role": "assistant", "content": "Echo: my name is Ada"},
        _user("who am I?"),
    ]
    # A request that carries its own conversation (an assistant message) is sent as it is.
    own = [_user("a"), {"role": "assistant", "content": "b"}, _user("c")]
    assert _chat(gw, key, own, session="pp-1", headers=prepend).status_code == 200
    assert _sent(upstream)[-1]["messages"] == own
    # Off unless asked (history.prepend is false here).
    assert _chat(gw, key, [_user("alone")], session="pp-1").status_code == 200
    assert _sent(upstream)[-1]["messages"] == [_user("alone")]
    assert len(_messages(gw, key, "pp-1")) == 8  # system messages are instructions, not stored turns


def test_session_cap_per_owner(gw: PortwayProcess, key: dict[str, str]) -> None:
    for _ in range(CAP - 1):
        assert HTTP.post(gw.base_url + "/sessions", json={}, headers=key).status_code == 201
    assert _chat(gw, key, [_user("the last one")], session="cap-last").status_code == 200
    refused = HTTP.post(gw.base_url + "/sessions", json={}, headers=key)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "session_limit_reached"
    chat = _chat(gw, key, [_user("one more")], session="cap-more")
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "session_limit_reached"
    assert _chat(gw, key, [_user("an existing one")], session="cap-last").status_code == 200
    assert HTTP.delete(gw.base_url + "/sessions/cap-last", headers=key).status_code == 200
    assert _chat(gw, key, [_user("room again")], session="cap-more").status_code == 200


def test_no_session_no_history(gw: PortwayProcess, key: dict[str, str]) -> None:
    assert _chat(gw, key, [_user("plain")], metadata={"tag": "x"}).status_code == 200
    assert HTTP.get(gw.base_url + "/sessions", headers=key).json()["data"] == []


def test_responses_api_appends_with_the_header(gw: PortwayProcess, key: dict[str, str]) -> None:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key=key["Authorization"][7:], max_retries=0, timeout=10)
    answer = sdk.responses.create(
        model="direct", input="via responses", store=False, extra_headers={"x-portway-session": "resp-1"}
    )
    assert answer.output_text == "Echo: via responses"
    stored = _messages(gw, key, "resp-1")
    assert stored[-1] == {"role": "assistant", "content": "Echo: via responses"}
    assert [m["role"] for m in stored] == ["user", "assistant"]


def test_plain_methods_for_the_compat_helpers(tmp_path: Path) -> None:
    """The methods seed 001's /api/chat-history maps onto, on a real SQLite database."""

    async def run() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
        await db.migrate()
        history = HistoryService(SessionStore(db.engine), HistoryConfig(max_sessions_per_owner=2))
        history.start()
        try:
            row, created = await history.create("user:u1", "chat-1", title="Mine")
            assert created and row.title == "Mine"
            await history.append("user:u1", "chat-1", "user", "hi", ts=1.0)
            await history.append("user:u1", "chat-1", "assistant", "hello", ts=2.0)
            await history.append("user:u1", "auto-2", "user", "made on first append", ts=3.0)
            sessions, more = await history.list_sessions("user:u1", limit=10)
            assert [s.id for s in sessions] == ["auto-2", "chat-1"] and not more
            session, page, more = await history.get("user:u1", "chat-1", limit=1, offset=1)
            assert session.message_count == 2 and more is False
            assert [(m.position, m.message, m.created_at) for m in page] == [
                (2, {"role": "assistant", "content": "hello"}, 2.0)
            ]
            with pytest.raises(SessionLimitReached):
                await history.create("user:u1")
            for call in (
                history.get("user:u2", "chat-1"),
                history.append("user:u2", "chat-1", "user", "not yours"),
                history.delete("user:u2", "chat-1"),
                history.create("user:u2", "chat-1"),
            ):
                with pytest.raises(NotFound):
                    await call
            with pytest.raises(ValidationError):
                await history.get("user:u1", "bad id")
            await history.delete("user:u1", "chat-1")
            with pytest.raises(NotFound):
                await history.get("user:u1", "chat-1")
        finally:
            await history.aclose()
            await db.aclose()

    asyncio.run(run())


@pytest.mark.postgres
def test_history_on_postgres_is_written_before_shutdown(
    upstream: FakeUpstream, tmp_path: Path, pg_url: str
) -> None:
    gw = PortwayProcess(tmp_path, _config(upstream), env={"PORTWAY_DATABASE_URL": pg_url})
    try:
        auth = gw.headers()
        assert _chat(gw, auth, [_user("on postgres")], session="pg-1").status_code == 200
        with HTTP.stream(
            "POST",
            gw.base_url + "/chat/completions",
            json={"model": "direct", "messages": [_user("streamed")], "stream": True},
            headers={**auth, "x-portway-session": "pg-1"},
        ) as streamed:
            assert b"[DONE]" in b"".join(streamed.iter_bytes())
        assert _get(gw, auth, "pg-1", limit=2, after=2).json()["messages"][1]["content"] == "Echo: streamed"
        assert _chat(gw, _new_key(gw), [_user("x")], session="pg-1").status_code == 404
        assert _chat(gw, auth, [_user("last words")], session="pg-1").status_code == 200
    finally:
        gw.stop()  # at once: the queued turn is written on the way down

    async def rows() -> list[tuple[int, str, str]]:
        import asyncpg

        con = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        try:
            found = await con.fetch(
                "SELECT m.position, m.role, s.owner FROM chat_messages m"
                " JOIN chat_sessions s ON s.id = m.session_id ORDER BY m.position"
            )
        finally:
            await con.close()
        return [(r["position"], r["role"], r["owner"]) for r in found]

    assert asyncio.run(rows()) == [(i + 1, "user" if i % 2 == 0 else "assistant", "master") for i in range(6)]
