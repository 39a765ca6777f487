"""The fake upstream is itself test infrastructure, so its wire behaviour is pinned down over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, RecordedRequest

BODY: dict[str, Any] = {"model": "fake-model", "messages": [{"role": "user", "content": "hello big world"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream().start() as up:
        yield up


@pytest.fixture
def up(server: FakeUpstream) -> FakeUpstream:
    server.reset()
    return server


def post(
    up: FakeUpstream,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = "sk-test",
    fault: str | None = None,
    **extra: Any,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if fault is not None:
        headers["x-fake-fault"] = fault
    payload = {**(body or BODY), **extra}
    return httpx.post(up.base_url + "/chat/completions", json=payload, headers=headers, timeout=5)


def sse_data(text: str) -> list[str]:
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


def stream_chunks(text: str) -> tuple[list[dict[str, Any]], str]:
    data = sse_data(text)
    return [json.loads(d) for d in data[:-1]], data[-1]


# -- normal answers ------------------------------------------------------------------------------


def test_non_stream_is_deterministic(up: FakeUpstream) -> None:
    first, second = post(up), post(up)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/json")
    assert first.content == second.content
    doc = first.json()
    assert doc["id"].startswith("chatcmpl-") and len(doc["id"]) == len("chatcmpl-") + 12
    assert doc["object"] == "chat.completion"
    assert doc["created"] == 1700000000
    assert doc["model"] == "fake-model"
    assert doc["system_fingerprint"] == "fp_fake"
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "Echo: hello big world"}
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_id_depends_on_body(up: FakeUpstream) -> None:
    assert post(up).json()["id"] != post(up, temperature=0.5).json()["id"]


def test_max_tokens_truncates_with_length_finish(up: FakeUpstream) -> None:
    doc = post(up, max_tokens=2).json()
    assert doc["choices"][0]["message"]["content"] == "Echo: hello"
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 2
    assert post(up, max_completion_tokens=3).json()["choices"][0]["message"]["content"] == "Echo: hello big"


def test_last_user_message_and_content_parts(up: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]},
    ]
    doc = post(up, {"model": "m", "messages": messages}).json()
    assert doc["choices"][0]["message"]["content"] == "Echo: part one two"
    assert doc["usage"]["prompt_tokens"] == 2 + 1 + 1 + 3


def test_stream_events_and_done(up: FakeUpstream) -> None:
    resp = post(up, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    chunks, last = stream_chunks(resp.text)
    assert last == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert words == ["Echo: ", "hello ", "big ", "world"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1
    assert {(c["created"], c["model"], c["object"]) for c in chunks} == {
        (1700000000, "fake-model", "chat.completion.chunk")
    }
    assert all("usage" not in c for c in chunks)
    assert post(up, stream=True).content == resp.content


def test_stream_include_usage_only_when_asked(up: FakeUpstream) -> None:
    chunks, last = stream_chunks(post(up, stream=True, stream_options={"include_usage": True}).text)
    assert last == "[DONE]"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    chunks, _ = stream_chunks(post(up, stream=True, stream_options={"include_usage": False}).text)
    assert all("usage" not in c for c in chunks)


def test_models(up: FakeUpstream) -> None:
    resp = httpx.get(up.base_url + "/models", headers={"Authorization": "Bearer k"})
    doc = resp.json()
    assert doc["object"] == "list"
    assert doc["data"][0] == {
        "id": "fake-model",
        "object": "model",
        "created": 1700000000,
        "owned_by": "fake",
    }
    assert len(doc["data"]) >= 2


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 422, 500, 502, 503])
def test_status_faults(up: FakeUpstream, status: int) -> None:
    resp = post(up, fault=str(status), stream=True)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert {"message", "type", "code"} <= error.keys()


def test_429_retry_after(up: FakeUpstream) -> None:
    assert post(up, fault="429").headers["retry-after"] == "1"
    resp = post(up, fault="429:7")
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_reset_is_a_connection_error(up: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await session.post(up.base_url + "/chat/completions", json=BODY, headers=_h("k", "reset"))


async def test_cut_stream_has_two_content_chunks_and_no_done(up: FakeUpstream) -> None:
    received = b""
    async with aiohttp.ClientSession() as session:
        body = {**BODY, "stream": True}
        async with session.post(up.base_url + "/chat/completions", json=body, headers=_h("k", "cut")) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in r.content:
                    received += line
    data = sse_data(received.decode())
    assert "[DONE]" not in data
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[1:]] == ["Echo: ", "hello "]


async def test_cut_non_stream_is_a_short_body(up: FakeUpstream) -> None:
    url = up.base_url + "/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=BODY, headers=_h("k", "cut")) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


def test_garbage(up: FakeUpstream) -> None:
    resp = post(up, fault="garbage")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        resp.json()
    resp = post(up, fault="garbage", stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "data:" not in resp.text


def test_slow_and_slowchunks(up: FakeUpstream) -> None:
    started = time.monotonic()
    assert post(up, fault="slow:0.3").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    chunks, last = stream_chunks(post(up, fault="slowchunks:0.05", stream=True).text)
    assert last == "[DONE]"
    assert time.monotonic() - started >= 0.05 * len(chunks)
    assert (
        post(up, fault="slowchunks:5").json()["choices"][0]["message"]["content"] == "Echo: hello big world"
    )


def test_hang_until_client_gives_up(up: FakeUpstream) -> None:
    with pytest.raises(httpx.TimeoutException):
        httpx.post(up.base_url + "/chat/completions", json=BODY, headers=_h("k", "hang"), timeout=0.3)
    assert up.wait_for(lambda rs: rs[-1].disconnected)
    assert not up.requests[-1].completed


def test_model_suffix_fault_and_echo(up: FakeUpstream) -> None:
    assert post(up, {**BODY, "model": "gpt-x@500"}).status_code == 500
    resp = post(up, {**BODY, "model": "any@slow:0.01"})
    assert resp.status_code == 200
    assert resp.json()["model"] == "any@slow:0.01"


def test_key_faults(up: FakeUpstream) -> None:
    resp = post(up, key="bad-secret-key")
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "Incorrect API key provided: bad***"
    assert "secret" not in resp.text
    assert post(up, key="forbidden-1").status_code == 403
    assert post(up, key=None).status_code == 401
    resp = httpx.post(up.base_url + "/chat/completions", json=BODY, headers={"x-api-key": "xk"})
    assert resp.status_code == 200
    assert up.requests[-1].key == "xk"


def test_script_queue_in_order_then_ok(up: FakeUpstream) -> None:
    up.script(["500", "429:2", "ok", "503"])
    assert [post(up).status_code for _ in range(5)] == [500, 429, 200, 503, 200]
    assert [r.fault for r in up.requests] == ["500", "429:2", "ok", "503", "ok"]


def test_script_scoped_by_model_and_key(up: FakeUpstream) -> None:
    up.script(["502"], model="other")
    up.script(["403"], key="sk-a")
    assert post(up, key="sk-b").status_code == 200
    assert post(up, key="sk-a").status_code == 403
    assert post(up, key="sk-a").status_code == 200
    assert post(up, {**BODY, "model": "other"}).status_code == 502
    assert post(up, {**BODY, "model": "other"}).status_code == 200


def test_header_beats_script_and_script_beats_model(up: FakeUpstream) -> None:
    up.script(["500"])
    assert post(up, fault="ok").status_code == 200
    assert post(up, {**BODY, "model": "m@503"}).status_code == 500
    assert post(up, {**BODY, "model": "m@503"}).status_code == 503


def test_models_endpoint_does_not_consume_scripts(up: FakeUpstream) -> None:
    up.script(["500"])
    assert httpx.get(up.base_url + "/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert post(up).status_code == 500


def test_unknown_faults_are_rejected(up: FakeUpstream) -> None:
    with pytest.raises(ValueError):
        up.script(["boom"])
    resp = post(up, fault="slow:soon")
    assert resp.status_code == 400
    assert "unknown fake fault" in resp.json()["error"]["message"]


# -- journal -------------------------------------------------------------------------------------


def test_journal_records_requests(up: FakeUpstream) -> None:
    post(up, key="sk-one", stream=True)
    post(up, key="bad-key")
    first, second = up.requests
    assert isinstance(first, RecordedRequest)
    assert (first.path, first.model, first.key, first.stream, first.fault) == (
        "/v1/chat/completions",
        "fake-model",
        "sk-one",
        True,
        "ok",
    )
    assert first.body is not None and first.body["stream"] is True
    assert first.headers["authorization"] == "Bearer sk-one"
    assert first.completed and not first.disconnected
    assert (second.fault, second.stream, second.completed) == ("401", False, True)
    up.reset()
    assert up.requests == []


async def test_journal_marks_client_disconnect_mid_stream(up: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        body = {**BODY, "stream": True}
        resp = await session.post(
            up.base_url + "/chat/completions", json=body, headers=_h("k", "slowchunks:0.2")
        )
        assert (await resp.content.readline()).startswith(b"data: ")
        resp.close()
    assert await up.wait_for_async(lambda rs: rs[-1].disconnected, timeout=3)
    assert not up.requests[-1].completed


def test_wait_for_times_out(up: FakeUpstream) -> None:
    assert not up.wait_for(lambda rs: len(rs) > 0, timeout=0.05)


# -- official SDK --------------------------------------------------------------------------------


def test_openai_sdk_create_and_stream(up: FakeUpstream) -> None:
    messages: Any = BODY["messages"]
    with openai.OpenAI(base_url=up.base_url, api_key="k", max_retries=0) as client:
        completion = client.chat.completions.create(model="fake-model", messages=messages)
        assert completion.choices[0].message.content == "Echo: hello big world"
        assert completion.usage is not None and completion.usage.total_tokens == 7

        stream = client.chat.completions.create(
            model="fake-model", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Echo: hello big world"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        assert "fake-model" in [m.id for m in client.models.list()]

    with (
        openai.OpenAI(base_url=up.base_url, api_key="bad", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


def test_start_stop_lifecycle() -> None:
    fake = FakeUpstream()
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake:
        assert fake.base_url == fake.url + "/v1"
        assert httpx.get(fake.base_url + "/models", headers={"x-api-key": "k"}).status_code == 200
    with pytest.raises(RuntimeError):
        _ = fake.url


def _h(key: str, fault: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "x-fake-fault": fault}
