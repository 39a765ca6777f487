"""Anthropic's Messages API end to end: the official `anthropic` SDK against a running portway whose upstream
is the fake one speaking chat completions (tool calls: tests/fakes/chat_tools.py).

messages.create plain and with a tool (tool_use, then the tool_result fed back), messages.stream with a
streamed tool call whose joined input_json_delta pieces are the upstream's arguments, count_tokens, errors in
Anthropic's shape (before and during a stream), auth by x-api-key and by Bearer, and the request log row
(tokens and cost) of each kind of request.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import chat_tools
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

anthropic = pytest.importorskip("anthropic")  # the dev extra has it

MODEL = "claude-sonnet-4-5"  # an alias of the fake upstream's model, as Claude Code would ask for
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOL = {"name": "get_weather", "description": "The current weather in a city.", "input_schema": SCHEMA}
PROMPT = "Weather in Paris?"


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["providers"]["anth"] = {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-anth"]}
    cfg["models"][MODEL] = ["anth/fake-model"]
    cfg["models"]["flaky-claude"] = ["anth/flaky-claude"]
    cfg["pricing"] = {"anth/*": {"input": 1000.0, "output": 2000.0}}  # USD per 1M: never a zero cost
    proc = PortwayProcess(tmp_path_factory.mktemp("messages"), cfg)
    yield proc
    proc.stop()


@pytest.fixture
def client(gw: PortwayProcess) -> Any:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.master_key, max_retries=0, timeout=20)


def _row(gw: PortwayProcess, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request log row of one request, once the writer has flushed it."""
    deadline = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            found = con.execute("SELECT * FROM request_log WHERE request_id = ?", (request_id,)).fetchall()
        except sqlite3.OperationalError:  # the table is not there yet
            found = []
        finally:
            con.close()
        if found:
            return dict(found[0])
        assert time.monotonic() < deadline, f"no request_log row for {request_id}"
        time.sleep(0.05)


def test_create_plain_text(client: Any, gw: PortwayProcess, upstream: FakeUpstream) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
        extra_headers={"x-request-id": "msg-plain-1"},
    )
    msg = raw.parse()
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert [(b.type, b.text) for b in msg.content] == [("text", "Echo: Hello there")]
    assert msg.stop_reason == "end_turn" and msg.model == "fake-model"
    # The fake counts a prompt's words (system and user) and one token per answer word.
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    assert raw.headers["x-portway-provider"] == "anth" and raw.headers["request-id"] == "msg-plain-1"
    sent = upstream.requests[-1].body
    assert sent is not None
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["max_tokens"] == 100 and sent["model"] == "fake-model"
    row = _row(gw, "msg-plain-1")
    assert (row["status"], row["requested_model"], row["provider"]) == (200, MODEL, "anth")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 3)
    assert row["cost_usd"] == pytest.approx((4 * 1000.0 + 3 * 2000.0) / 1e6)


def test_max_tokens_stop_reason(client: Any) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "a b c d"}])
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "Echo: a"


def test_tool_use_then_tool_result_round_trip(client: Any, upstream: FakeUpstream) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": PROMPT, "unit": "celsius"}
    second = client.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[TOOL],
        messages=[
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "15 degrees, sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Tool said: 15 degrees, sunny"
    sent = upstream.requests[-1].body
    assert sent is not None
    assistant, result = sent["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == call.id
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == call.input
    assert result == {"role": "tool", "tool_call_id": call.id, "content": "15 degrees, sunny"}


def test_stream_tool_call_arguments_identical(client: Any, gw: PortwayProcess) -> None:
    pieces: list[str] = []
    with client.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-request-id": "msg-stream-tool"},
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces.append(event.delta.partial_json)
        final = stream.get_final_message()
    expected = chat_tools.arguments_for(SCHEMA, PROMPT)  # what the upstream streamed, in pieces
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert pieces == chat_tools.pieces(expected)
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"] and final.content[0].input == json.loads(expected)
    assert final.usage.output_tokens == len(pieces) and final.usage.input_tokens == 3
    row = _row(gw, "msg-stream-tool")
    assert row["stream"] == 1 and row["status"] == 200 and not row["usage_estimated"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, len(pieces)) and row["cost_usd"] > 0


def test_stream_text(client: Any) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: one two three"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4


def test_bearer_auth_and_anthropic_headers(gw: PortwayProcess) -> None:
    bearer = anthropic.Anthropic(base_url=gw.url, auth_token=gw.master_key, max_retries=0, timeout=20)
    msg = bearer.messages.create(
        model=MODEL,
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert msg.content[0].text == "Echo: hi"


def test_count_tokens(client: Any) -> None:
    count = client.messages.count_tokens(
        model=MODEL, system="Be brief.", messages=[{"role": "user", "content": "Hello there"}], tools=[TOOL]
    )
    assert count.input_tokens > 10  # bytes / 4 of a body holding a tool's schema
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_errors_have_anthropics_shape(client: Any, gw: PortwayProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    body = missing.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"] and body["request_id"]
    bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-pw-wrong", max_retries=0, timeout=20)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        bad.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["error"]["type"] == "authentication_error"
    r = HTTP.post(
        gw.url + "/v1/messages",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": gw.master_key, "anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


def test_upstream_failure_is_an_api_error(client: Any, upstream: FakeUpstream) -> None:
    upstream.script(["500", "500", "500"], model="flaky-claude")
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(
            model="flaky-claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"


def test_stream_broken_mid_way_ends_in_an_error_event(client: Any, upstream: FakeUpstream) -> None:
    upstream.script(["cut"], model="flaky-claude")
    got: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as broken,
        client.messages.stream(
            model="flaky-claude", max_tokens=50, messages=[{"role": "user", "content": "one two three four"}]
        ) as stream,
    ):
        got.extend(stream.text_stream)
    assert got and "upstream stream interrupted" in str(broken.value.body)


def test_a_claude_code_shaped_request(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    """What Claude Code sends: `?beta=true`, beta headers, system blocks and tools with cache_control,
    thinking, metadata, a stream; its extras are dropped and the stream is Anthropic's event sequence."""
    body = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be concise."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}},
                ],
            }
        ],
        "tools": [{**TOOL, "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "metadata": {"user_id": "user_abc_account__session_1"},
        "temperature": 1,
    }
    headers = {
        "authorization": f"Bearer {gw.master_key}",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    with HTTP.stream("POST", gw.url + "/v1/messages?beta=true", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "error" not in names
    sent = upstream.requests[-1].body
    assert sent is not None
    assert sent["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nBe concise."}
    assert sent["user"] == "user_abc_account__session_1" and "thinking" not in sent
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["stream_options"]["include_usage"]
