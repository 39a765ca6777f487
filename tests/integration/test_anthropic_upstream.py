"""The openai SDK's chat (with tools, streamed or not) through a running portway to a fake Anthropic upstream.

The fake (tests/fakes/anthropic.py) answers on /v1/messages as Anthropic does and refuses what the real API
refuses, so every request portway translates is checked on arrival too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from portway.http.client import Transport
from portway.providers.anthropic import AnthropicProvider, AnthropicStream
from portway.providers.base import ChatCall, Completion, FailureKind, ProviderSettings, UpstreamFailure
from tests.fakes.anthropic import value_for
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess
from tests.integration.test_disconnect import wait_row

MODEL = "claude-sonnet-4-5"
PRICE = {"input": 3.0, "output": 15.0}  # USD per 1M tokens
SYSTEM = {"role": "system", "content": "You are terse."}
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Forecast", "parameters": PARAMS},
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}}}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    def claude(key: str, **options: Any) -> dict[str, Any]:
        return {"type": "anthropic", "base_url": upstream.url, "api_keys": [key], "options": options}

    config = {
        "routing": {"deadline": 10, "first_byte_timeout": 3, "backoff_base": 0.01, "backoff_max": 0.05},
        "providers": {
            "claude": claude("sk-ant-main"),
            "native": claude("sk-ant-native", json_schema="native"),
            "flaky": claude(
                "sk-ant-flaky"
            ),  # their own keys and breakers: the fault tests touch nothing else
            "broken": claude("sk-ant-broken"),
            "up": {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-main"]},
        },
        "models": {
            "claude": [f"claude/{MODEL}"],
            "native": [f"native/{MODEL}"],
            "overloaded": [f"flaky/{MODEL}@529", "up/fake-model"],
            "errorfirst": [f"flaky/{MODEL}@errorfirst", "up/fake-model"],
            "streamerror": [f"broken/{MODEL}@streamerror"],
        },
        "pricing": {"claude/*": PRICE, "native/*": PRICE},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("anthropic"), config)
    yield proc
    proc.stop()


@pytest.fixture
def client(gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=20)


def _assemble(stream: Any) -> tuple[str, dict[int, dict[str, str]], str | None, Any]:
    """(text, tool calls by index, finish_reason, usage) of a streamed answer."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] = (call.function and call.function.name) or entry["name"]
                entry["arguments"] += (call.function and call.function.arguments) or ""
    return text, calls, finish, usage


def test_text_answer_with_cached_usage(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    got = client.chat.completions.create(
        model="claude", messages=[SYSTEM, {"role": "user", "content": "hello there"}]
    )
    assert got.choices[0].message.content == "Echo: hello there" and got.choices[0].finish_reason == "stop"
    assert got.model == MODEL and got.usage is not None
    # The fake reports the system prompt's 3 words as cache reads: prompt_tokens counts them too.
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (5, 3)
    assert got.usage.prompt_tokens_details is not None and got.usage.prompt_tokens_details.cached_tokens == 3
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.key == "sk-ant-main"
    assert sent.headers["anthropic-version"] == "2023-06-01" and "authorization" not in sent.headers
    assert (
        sent.body is not None and sent.body["system"] == "You are terse." and sent.body["max_tokens"] == 4096
    )


def test_tool_call_and_its_result_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    messages: list[Any] = [{"role": "user", "content": "Paris"}]
    got = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 42}
    messages += [choice.message.model_dump(exclude_none=True), _result(call.id, "18C sunny")]
    after = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert (
        after.choices[0].message.content == "Result: 18C sunny" and after.choices[0].finish_reason == "stop"
    )
    turns = upstream.requests[-1].body["messages"]  # type: ignore[index]
    assert turns[1]["content"][0] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris", "days": 42},
    }
    assert (
        turns[2]["content"][0]["type"] == "tool_result" and turns[2]["content"][0]["tool_use_id"] == call.id
    )


def _result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def test_streamed_parallel_tool_calls_round_trip_with_identical_arguments(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Rome"}]
    stream = client.chat.completions.create(
        model="claude",
        messages=messages,
        tools=[WEATHER, TIME],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, calls, finish, usage = _assemble(stream)
    assert (
        text == ""
        and finish == "tool_calls"
        and [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    )
    # Byte for byte what the upstream streamed in its input_json_delta pieces (PIECE characters each).
    assert calls[0]["arguments"] == json.dumps(value_for(PARAMS, "Rome"))
    assert calls[1]["arguments"] == json.dumps({"tz": "Rome"})
    assert usage is not None and usage.prompt_tokens == 1 and usage.completion_tokens > 2
    whole = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER, TIME])
    assert [json.loads(c.function.arguments) for c in whole.choices[0].message.tool_calls or []] == [
        json.loads(c["arguments"]) for c in calls.values()
    ]
    tool_calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls.values()
    ]
    messages += [{"role": "assistant", "content": None, "tool_calls": tool_calls}]
    messages += [_result(c["id"], f"{c['name']} done") for c in calls.values()]
    text, _, finish, _ = _assemble(
        client.chat.completions.create(model="claude", messages=messages, stream=True)
    )
    assert (text, finish) == ("Result: get_weather done get_time done", "stop")
    turns = upstream.requests[-1].body["messages"]  # type: ignore[index]
    sent = [b["input"] for b in turns[1]["content"] if b["type"] == "tool_use"]
    assert sent == [json.loads(c["arguments"]) for c in calls.values()]
    assert [b["tool_use_id"] for b in turns[2]["content"]] == [c["id"] for c in calls.values()]


@pytest.mark.parametrize("model", ["claude", "native"])
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answer_parses(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, stream: bool
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    messages = [{"role": "user", "content": "Oslo"}]
    if stream:
        text, _, finish, _ = _assemble(
            client.chat.completions.create(model=model, messages=messages, response_format=fmt, stream=True)
        )
    else:
        got = client.chat.completions.create(model=model, messages=messages, response_format=fmt)
        text, finish = got.choices[0].message.content or "", got.choices[0].finish_reason
    assert json.loads(text) == {"city": "Oslo", "celsius": 4.5} and finish == "stop"
    body = upstream.requests[-1].body or {}
    if model == "native":
        assert (
            body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
            and "tools" not in body
        )
    else:
        assert body["tool_choice"] == {"type": "tool", "name": "weather"}


@pytest.mark.parametrize("stream", [False, True])
def test_usage_and_cost_are_recorded(client: openai.OpenAI, gw: PortwayProcess, stream: bool) -> None:
    rid = f"anthropic-usage-{stream}"
    create = client.chat.completions.with_raw_response.create
    reply = create(
        model="claude",
        messages=[SYSTEM, {"role": "user", "content": "count my words"}],
        stream=stream,
        extra_headers={"x-request-id": rid},
    )
    if stream:
        list(reply.parse())
    row = wait_row(gw.data_dir / "portway.db", rid)
    assert row["status"] == 200 and row["provider"] == "claude" and row["served_model"] == MODEL
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (6, 4, 0)
    assert row["cost_usd"] == pytest.approx((6 * PRICE["input"] + 4 * PRICE["output"]) / 1e6)


@pytest.mark.parametrize("model", ["overloaded", "errorfirst"])
def test_overloaded_upstream_falls_back(client: openai.OpenAI, model: str) -> None:
    """529, and an error event before the first byte: the next target answers."""
    stream = model == "errorfirst"
    reply = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=stream
    )
    assert reply.headers["x-portway-provider"] == "up"
    if stream:
        assert _assemble(reply.parse())[0] == "Echo: hi"


def test_error_event_mid_stream_reaches_the_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="streamerror", messages=[{"role": "user", "content": "hello there"}], stream=True
    )
    with pytest.raises(openai.APIError, match="overloaded_error"):
        _assemble(stream)


def test_upstream_refusal_is_relayed_as_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )


# -- the provider itself over a real Transport: the /v1/messages pass-through, broken streams ------------


def _provider(upstream: FakeUpstream) -> tuple[AnthropicProvider, Transport]:
    transport = Transport()
    settings = ProviderSettings("claude", "anthropic", upstream.url)
    return AnthropicProvider(settings, transport), transport


MESSAGES_BODY = {"model": "asked", "max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}]}


async def test_passthrough_answers_are_anthropic_bytes(upstream: FakeUpstream) -> None:
    provider, transport = _provider(upstream)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    try:
        done = await provider.messages_passthrough(ChatCall(MESSAGES_BODY, MODEL, False, "k", 5))
        assert isinstance(done, Completion)
        async with httpx.AsyncClient(base_url=upstream.url, headers=headers) as http:
            direct = await http.post("/v1/messages", json={**MESSAGES_BODY, "model": MODEL})
        assert done.body == direct.content and done.served_model == MODEL
        assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (2, 3)

        body = {**MESSAGES_BODY, "stream": True}
        stream = await provider.messages_passthrough(ChatCall(body, MODEL, True, "k", 5))
        assert isinstance(stream, AnthropicStream)
        got = b"".join([event async for event in stream])
        async with httpx.AsyncClient(base_url=upstream.url, headers=headers) as http:
            direct = await http.post("/v1/messages", json={**body, "model": MODEL})
        assert got == direct.content and got.endswith(
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
        assert stream.usage is not None and (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (
            2,
            3,
        )
    finally:
        await transport.aclose()


KINDS = {
    "cut": FailureKind.CONNECTION,
    "truncated": FailureKind.BAD_RESPONSE,
    "streamerror": FailureKind.SERVER,
}


@pytest.mark.parametrize("fault", sorted(KINDS))
async def test_a_broken_stream_raises_mid_way(upstream: FakeUpstream, fault: str) -> None:
    provider, transport = _provider(upstream)
    payload = {"model": "claude", "messages": [{"role": "user", "content": "hello there gateway"}]}
    try:
        stream = await provider.chat(ChatCall(payload, f"{MODEL}@{fault}", True, "k", 5))
        assert isinstance(stream, AnthropicStream)
        chunks = []
        with pytest.raises(UpstreamFailure) as err:
            async for event in stream:
                chunks.append(event)
        assert chunks and chunks[0].startswith(b'data: {"id":"msg_')  # the role chunk came first
        assert err.value.kind is KINDS[fault]
    finally:
        await transport.aclose()
