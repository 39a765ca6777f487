"""POST /v1/responses through a running portway with the `openai` SDK's `responses.create`, against the fake
upstream speaking chat completions (tool calls from tests/fakes/chat_tools.py): plain and streamed answers,
a function tool, a `previous_response_id` turn that carries the tool's output, retrieve / delete /
input_items, another principal's 404, what the upstream was sent, and the request-log row of each."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

PROMPT = "Say this is a test"
ANSWER = "Echo: Say this is a test"
PRICE = 1000.0  # USD per 1M tokens: $0.001 a token
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


def wait_row(gw: PortwayProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request's request-log row, once the batched writer has flushed it."""
    until = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(Path(gw.data_dir) / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM request_log WHERE request_id = ?", (request_id,)).fetchone()
        except sqlite3.OperationalError:
            row = None
        finally:
            con.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < until, f"no request_log row for {request_id}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["pricing"] = {"up/*": {"input": PRICE, "output": PRICE}}
    proc = PortwayProcess(tmp_path_factory.mktemp("responses"), cfg)
    yield proc
    proc.stop()


@pytest.fixture
def sdk(gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=20)


def _sent(upstream: FakeUpstream) -> list[dict[str, Any]]:
    return [r.body or {} for r in upstream.requests if r.path == "/v1/chat/completions"]


def test_create_answers_with_a_message_item(
    sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    raw = sdk.responses.with_raw_response.create(
        model="direct", input=PROMPT, instructions="Be brief.", extra_headers={"x-request-id": "r-plain"}
    )
    got = raw.parse()
    assert got.id.startswith("resp_") and got.object == "response" and got.status == "completed"
    assert got.output_text == ANSWER and got.model == "fake-model" and got.instructions == "Be brief."
    (item,) = got.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert got.usage is not None
    assert (got.usage.input_tokens, got.usage.output_tokens, got.usage.total_tokens) == (7, 6, 13)
    assert got.usage.input_tokens_details.cached_tokens == 0
    assert raw.headers["x-portway-provider"] == "up" and raw.headers["x-request-id"] == "r-plain"
    assert _sent(upstream) == [
        {
            "model": "fake-model",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
        }
    ]
    row = wait_row(gw, "r-plain")
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (200, 0, 7, 6)
    assert row["requested_model"] == "direct" and row["cost_usd"] == pytest.approx(13 * PRICE / 1e6)


def test_streamed_create_sends_the_typed_events(
    sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    with sdk.responses.create(
        model="direct", input=PROMPT, stream=True, extra_headers={"x-request-id": "r-stream"}
    ) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    words = len(ANSWER.split())
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * words,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    done = events[-1].response
    assert done.output_text == ANSWER and done.status == "completed" and done.id == events[0].response.id
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (5, 6)
    (sent,) = _sent(upstream)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    row = wait_row(gw, "r-stream")
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (200, 1, 5, 6)
    assert row["usage_estimated"] == 0
    assert sdk.responses.retrieve(done.id).output_text == ANSWER  # stored at the end of the stream


def test_stream_helper_collects_the_final_response(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="direct", input=PROMPT) as stream:
        final = stream.get_final_response()
    assert final.output_text == ANSWER and final.status == "completed"


def test_function_tool_then_previous_response_turn(
    sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    first = sdk.responses.create(
        model="direct", input="Weather in Paris?", tools=[WEATHER], extra_headers={"x-request-id": "r-tool"}
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Weather in Paris?", "unit": "c"}
    assert call.call_id.startswith("call_")
    assert _sent(upstream)[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    second = sdk.responses.create(
        model="direct",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"}],
        tools=[WEATHER],
        extra_headers={"x-request-id": "r-turn"},
    )
    assert second.output_text == "Tool said: 18C and sunny"
    assert second.previous_response_id == first.id
    assert _sent(upstream)[1]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "18C and sunny"},
    ]
    for rid in ("r-tool", "r-turn"):
        assert wait_row(gw, rid)["status"] == 200

    items = sdk.responses.input_items.list(second.id)
    assert [(i.type, i.call_id) for i in items.data] == [("function_call_output", call.call_id)]
    assert items.data[0].id.startswith("fco_")
    assert sdk.responses.retrieve(first.id).model_dump() == first.model_dump()

    third = sdk.responses.create(model="direct", previous_response_id=second.id, input="And tomorrow?")
    assert third.output_text == "Echo: And tomorrow?"
    assert [m["role"] for m in _sent(upstream)[2]["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


def test_streamed_tool_call_arguments_arrive_in_pieces(sdk: openai.OpenAI) -> None:
    plain = sdk.responses.create(model="direct", input="Weather in Paris?", tools=[WEATHER])
    with sdk.responses.create(model="direct", input="Weather in Paris?", tools=[WEATHER], stream=True) as s:
        events = list(s)
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and "".join(deltas) == done.arguments == plain.output[0].arguments
    (item,) = [e.item for e in events if e.type == "response.output_item.done"]
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id.startswith("call_")
    assert events[-1].type == "response.completed"


def test_retrieve_delete_and_input_items(sdk: openai.OpenAI) -> None:
    created = sdk.responses.create(
        model="direct",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        ],
    )
    page = sdk.responses.input_items.list(created.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"] and page.has_more
    everything = [i.content[0].text for i in sdk.responses.input_items.list(created.id)]  # desc, all pages
    assert everything == ["three", "two", "one"]
    assert sdk.responses.retrieve(created.id).output_text == "Echo: three"
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(created.id)


def test_another_principal_finds_nothing(sdk: openai.OpenAI, gw: PortwayProcess) -> None:
    mine = sdk.responses.create(model="direct", input="private")
    created = HTTP.post(gw.url + "/admin/keys", json={"name": "other"}, headers=gw.headers())
    created.raise_for_status()
    other = openai.OpenAI(base_url=gw.base_url, api_key=created.json()["key"], max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model="direct", input="hi", previous_response_id=mine.id)
    assert info.value.param == "previous_response_id"
    assert sdk.responses.retrieve(mine.id).output_text == "Echo: private"  # still there for its owner


def test_store_false_keeps_nothing(sdk: openai.OpenAI) -> None:
    got = sdk.responses.create(model="direct", input="forget me", store=False)
    assert got.store is False and got.output_text == "Echo: forget me"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(got.id)


def test_refusals_and_a_broken_stream(sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="direct", input="news?", tools=[{"type": "web_search"}])
    assert info.value.code == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="no-such-model", input="hi")
    upstream.script(["cut"], model="single-model")
    with (
        pytest.raises(openai.APIError, match="interrupted"),
        sdk.responses.create(
            model="single", input=PROMPT, stream=True, extra_headers={"x-request-id": "r-cut"}
        ) as stream,
    ):
        for _ in stream:
            pass
    row = wait_row(gw, "r-cut")
    assert (row["status"], row["error_code"]) == (502, "upstream_error")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'portway.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_store_follows_the_chain_scoped_to_its_owner(db_url: str) -> None:
    """The stored-response queries on both databases: the recursive chain walk, ownership, delete."""
    from portway.stores.sql.database import Database
    from portway.stores.sql.responses import ResponseStore, StoredResponse

    db = Database(db_url)
    await db.migrate()
    store = ResponseStore(db.engine)

    def turn(n: int, previous: str | None, owner: str = "master") -> StoredResponse:
        said = {
            "id": f"msg_in{n}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": f"q{n}"}],
        }
        answer = {
            "id": f"msg_out{n}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": f"a{n}", "annotations": []}],
        }
        response = {"id": f"resp_{n}", "object": "response", "status": "completed", "output": [answer]}
        return StoredResponse(f"resp_{n}", owner, previous, float(n), "m", "completed", response, [said])

    try:
        # A turn is asked for only once the one before it was found, which waited for its write.
        for row in (turn(1, None), turn(2, "resp_1"), turn(9, None, owner="key:other")):
            store.save_later(row)
            assert await store.get(row.id, row.principal) is not None  # waits for the write in flight
        store.save_later(turn(3, "resp_2"))
        history = await store.history("resp_3", "master")  # waits for the write in flight
        assert history is not None
        assert [i["id"] for i in history] == [
            "msg_in1",
            "msg_out1",
            "msg_in2",
            "msg_out2",
            "msg_in3",
            "msg_out3",
        ]
        assert await store.history("resp_3", "key:other") is None
        assert await store.get("resp_9", "master") is None
        got = await store.get("resp_2", "master")
        assert got is not None and got.response["output"][0]["content"][0]["text"] == "a2"
        assert await store.delete("resp_2", "key:other") is False
        assert await store.delete("resp_2", "master") is True
        assert [i["id"] for i in await store.history("resp_3", "master") or []] == ["msg_in3", "msg_out3"]
        await store.aclose()
    finally:
        await db.aclose()
