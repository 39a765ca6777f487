"""The openai SDK against a running portway whose upstream is (the fake) Google Gemini API.

Chat with tools (streamed and not, parallel calls, results fed back, thought signatures kept across turns),
structured output (`chat.completions.parse` with a pydantic model), text streams with usage, error
classification (a bad key of a pool, quota, a 400 relayed, a break mid-stream), and the usage and cost of
every request in the request log.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per 1M tokens
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
                "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def gem_gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    config = {
        "routing": {"deadline": 6, "first_byte_timeout": 3, "backoff_base": 0.01, "backoff_max": 0.05},
        "providers": {
            "gem": {"type": "gemini", "base_url": upstream.url, "api_keys": ["k-gem"]},
            "gempool": {"type": "gemini", "base_url": upstream.url, "api_keys": ["bad-key", "k-gem-2"]},
            "up": {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-main"]},
        },
        "models": {
            "gem": ["gem/gemini-fake"],
            "think": ["gem/gemini-think-cache"],
            "pooled": ["gempool/gemini-fake"],
            "fallback": ["gem/gemini-fake@503", "up/fake-model"],
        },
        "pricing": {"gem/*": {"input": PRICE_IN, "output": PRICE_OUT}},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("gem"), config)
    yield proc
    proc.stop()


@pytest.fixture
def client(gem_gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gem_gw.base_url, api_key=gem_gw.master_key, max_retries=0, timeout=20)


def _rid() -> dict[str, str]:
    return {"x-request-id": "gem-" + uuid.uuid4().hex[:12]}


def _row(gw: PortwayProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request's row, once the batched writer has flushed it."""
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


def _assert_charged(row: dict[str, Any], prompt: int, completion: int, stream: bool) -> None:
    assert row["status"] == 200 and row["provider"] == "gem" and row["stream"] == int(stream)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["usage_estimated"] == 0
    assert row["cost_usd"] == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6)


def _collect(stream: Any) -> tuple[str, dict[int, dict[str, Any]], str | None, Any]:
    """Text, tool calls by index (arguments joined), the finish reason and the usage of a chunk stream."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            finish = choice.finish_reason or finish
    return text, calls, finish, usage


def test_tool_call_and_its_result_fed_back(
    client: openai.OpenAI, upstream: FakeUpstream, gem_gw: PortwayProcess
) -> None:
    ask = "get_weather for Paris, s'il vous plaît"
    messages: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": ask}]
    headers = _rid()
    first = client.chat.completions.create(
        model="gem", messages=messages, tools=[WEATHER_TOOL], extra_headers=headers
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": ask, "days": 42, "unit": "celsius"}
    sent = upstream.requests[-1]
    assert (
        sent.path == "/v1beta/models/gemini-fake:generateContent"
        and sent.headers["x-goog-api-key"] == "k-gem"
    )
    assert "additionalProperties" not in json.dumps(sent.body) and sent.body["systemInstruction"]
    assert first.usage is not None
    _assert_charged(
        _row(gem_gw, headers["x-request-id"]), first.usage.prompt_tokens, first.usage.completion_tokens, False
    )

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = client.chat.completions.create(model="gem", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert (
        second.choices[0].message.content == 'Tool said: [{"name": "get_weather", "response": {"temp": 21}}]'
    )
    turns = upstream.requests[-1].body["contents"]
    assert [t["role"] for t in turns] == ["user", "model", "user"]


@pytest.mark.parametrize("model", ["gem", "think"])
def test_streamed_parallel_tool_calls_round_trip_with_identical_arguments(
    client: openai.OpenAI, upstream: FakeUpstream, gem_gw: PortwayProcess, model: str
) -> None:
    messages: list[Any] = [{"role": "user", "content": 'parallel: get_weather and get_time, "Zürich" ✓'}]
    tools = [WEATHER_TOOL, TIME_TOOL]
    whole = client.chat.completions.create(model=model, messages=messages, tools=tools)
    headers = _rid()
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=tools,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    text, calls, finish, usage = _collect(stream)
    assert finish == "tool_calls" and text == ""
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls or []]
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == expected
    assert len(expected) == 2 and len({c["id"] for c in calls.values()}) == 2
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if model == "think":  # 5 thought tokens, 2 cached: reported in the details, thoughts billed as output
        details = usage.model_dump()
        assert details["completion_tokens_details"]["reasoning_tokens"] == 5
        assert details["prompt_tokens_details"]["cached_tokens"] == 2
    _assert_charged(_row(gem_gw, headers["x-request-id"]), usage.prompt_tokens, usage.completion_tokens, True)

    # The results go back: the model's thought signature with them (a *think* model refuses a turn without).
    assistant = whole.choices[0].message.model_dump(exclude_none=True)
    results = [
        {"role": "tool", "tool_call_id": c.id, "content": f"result {c.function.name}"}
        for c in whole.choices[0].message.tool_calls or []
    ]
    answer = client.chat.completions.create(
        model=model, messages=[*messages, assistant, *results], tools=tools
    )
    assert (answer.choices[0].message.content or "").startswith("Tool said: ")
    sent = upstream.requests[-1].body["contents"]
    assert [p["functionResponse"]["name"] for p in sent[2]["parts"]] == ["get_weather", "get_time"]
    signature = sent[1]["parts"][0].get("thoughtSignature")
    assert (
        signature.startswith("sig-") if model == "think" else signature == "skip_thought_signature_validator"
    )


class Place(BaseModel):
    name: str
    rank: int
    kind: Literal["city", "village"]


class Report(BaseModel):
    summary: str
    places: list[Place]
    best: Place | None
    score: float | None


def test_structured_output_with_the_sdk_parse(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    messages = [{"role": "user", "content": "rank the places"}]
    parsed = client.chat.completions.parse(model="gem", messages=messages, response_format=Report)
    report = parsed.choices[0].message.parsed
    assert report is not None and report.summary == "rank the places" and report.places[0].rank == 42
    assert report.places[0].kind == "city"
    config = upstream.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "responseSchema" in config
    assert "additionalProperties" not in json.dumps(config) and "$ref" not in json.dumps(config)

    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    text, _, finish, _ = _collect(
        client.chat.completions.create(model="gem", messages=messages, response_format=fmt, stream=True)
    )
    assert json.loads(text) == {"answer": "rank the places"} and finish == "stop"


def test_text_stream_matches_the_answer_and_reports_usage(
    client: openai.OpenAI, gem_gw: PortwayProcess
) -> None:
    messages = [{"role": "user", "content": "hello there gemini"}]
    whole = client.chat.completions.create(model="gem", messages=messages)
    assert whole.choices[0].message.content == "Echo: hello there gemini"
    assert whole.model == "gemini-fake" and whole.id.startswith("chatcmpl-")
    headers = _rid()
    stream = client.chat.completions.create(
        model="gem",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    text, calls, finish, usage = _collect(stream)
    assert text == whole.choices[0].message.content and not calls and finish == "stop"
    assert usage is not None and whole.usage is not None and usage.model_dump() == whole.usage.model_dump()
    _assert_charged(_row(gem_gw, headers["x-request-id"]), usage.prompt_tokens, usage.completion_tokens, True)
    short = client.chat.completions.create(model="gem", messages=messages, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.choices[0].message.content == "Echo: hello "


def test_errors_are_classified(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(2):  # bad-key is answered 400 API_KEY_INVALID: an auth failure, set aside, next key
        pooled = client.chat.completions.create(model="pooled", messages=msgs)
        assert pooled.choices[0].message.content == "Echo: hi"
    keys = [r.key for r in upstream.requests]
    assert keys[-1] == "k-gem-2" and keys.count("bad-key") <= 1
    fallback = client.chat.completions.create(
        model="fallback", messages=msgs
    )  # 503 UNAVAILABLE -> next target
    assert fallback.model == "fake-model"
    with pytest.raises(openai.BadRequestError) as info:  # the client's fault: relayed, no fallback
        client.chat.completions.create(model="gem/gemini-fake@400", messages=msgs)
    assert "Request contains an invalid argument." in str(info.value)
    assert all("key=" not in r.path and "k-gem" not in r.path for r in upstream.requests)


def test_a_break_mid_stream_reaches_the_client(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gem/gemini-fake@streamerror",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    got = ""
    with pytest.raises(openai.APIError, match="upstream stream interrupted"):
        for chunk in stream:
            got += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert got == "Echo: "


@pytest.mark.parametrize(("fault", "reason"), [("empty", "stop"), ("blocked", "content_filter")])
def test_empty_and_blocked_answers(client: openai.OpenAI, fault: str, reason: str) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model=f"gem/gemini-fake@{fault}", messages=msgs)
    assert whole.choices[0].message.content == "" and whole.choices[0].finish_reason == reason
    text, calls, finish, _ = _collect(
        client.chat.completions.create(model=f"gem/gemini-fake@{fault}", messages=msgs, stream=True)
    )
    assert text == "" and not calls and finish == reason
