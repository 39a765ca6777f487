"""Golden cases for the Anthropic upstream (providers/anthropic_wire.py, anthropic.py): pure, no network.

Each golden/anthropic_*.json file is one case, its input written from Anthropic's Messages API reference
(https://docs.anthropic.com/en/api/messages, .../messages-streaming) and OpenAI's Chat Completions one:

- `request`: a chat completions payload (+ `stream`, the provider's `options`) -> the wire request;
- `refused`: a payload no Messages request can express -> the 400's message and param;
- `response`: an Anthropic Message (+ the JSON answer's tool) -> the chat.completion the client reads;
- `stream`: Anthropic's SSE events -> the chat.completion.chunk events ("[DONE]" for the end) and the usage.

PORTWAY_UPDATE_GOLDEN=1 rewrites each file's `expected` from its input: review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from portway.http.client import Transport
from portway.http.connection import Headers
from portway.providers.anthropic import AnthropicProvider
from portway.providers.anthropic_wire import (
    ChunkTranslator,
    PassthroughRelay,
    parse_passthrough,
    parse_response,
)
from portway.providers.base import ChatCall, FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.registry import provider_class

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("anthropic_*.json"))
KEY = "sk-ant-api03-Zq8xW2pLm4Nv7Rt1Kd9s"
CREATED = 1700000000


def provider(
    options: dict[str, Any] | None = None, base_url: str = "https://api.anthropic.com"
) -> AnthropicProvider:
    settings = ProviderSettings(
        "claude", "anthropic", base_url, headers={"X-Title": "portway"}, options=options or {}
    )
    return AnthropicProvider(settings, Transport())


def cases(kind: str) -> list[Any]:
    out = []
    for path in FILES:
        case = json.loads(path.read_text())
        if case["kind"] == kind:
            out.append(pytest.param(path, case, id=path.stem))
    return out


def check(path: Path, case: dict[str, Any], actual: Any) -> None:
    if os.environ.get("PORTWAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps({**case, "expected": actual}, indent=2, sort_keys=True) + "\n")
        case = json.loads(path.read_text())
    assert case["expected"] is not None, f"{path.name} has no expected: run with PORTWAY_UPDATE_GOLDEN=1"
    assert actual == case["expected"]


def encode(event: dict[str, Any]) -> bytes:
    """An event as Anthropic sends it: an `event:` line naming it, then its data."""
    return f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


def read(event: bytes) -> Any:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2, event
    data = event[6:-2]
    return "[DONE]" if data == b"[DONE]" else orjson.loads(data)


def test_every_golden_file_has_a_known_kind() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in FILES}
    assert kinds == {"request", "refused", "response", "stream"}


def test_declaration() -> None:
    cls = provider_class("anthropic")
    assert cls is AnthropicProvider and cls.default_base_url == "https://api.anthropic.com"
    assert cls.needs_key and not cls.free and cls.speaks_messages
    with pytest.raises(ValueError, match="extra"):
        provider({"anthropic_versoin": "x"})


@pytest.mark.parametrize(("path", "case"), cases("request"))
def test_request(path: Path, case: dict[str, Any]) -> None:
    adapter = provider(case.get("options"))
    req, json_tool = adapter.build_chat_request(
        ChatCall(case["input"], "claude-sonnet-4-5", case.get("stream", False), KEY, 10)
    )
    actual = {
        "method": req.method,
        "url": req.url,
        "headers": req.headers,
        "body": json.loads(req.body),
        "json_tool": json_tool,
    }
    check(path, case, actual)


@pytest.mark.parametrize(("path", "case"), cases("refused"))
def test_refused(path: Path, case: dict[str, Any]) -> None:
    with pytest.raises(UpstreamFailure) as err:
        provider().build_chat_request(ChatCall(case["input"], "claude-sonnet-4-5", False, KEY, 10))
    assert err.value.kind is FailureKind.BAD_REQUEST and err.value.status == 400
    check(path, case, {"message": err.value.message, "param": err.value.param})


@pytest.mark.parametrize(("path", "case"), cases("response"))
def test_response(path: Path, case: dict[str, Any]) -> None:
    body = orjson.dumps(case["input"])
    result = parse_response(body, "asked-model", case.get("json_tool"), CREATED)
    usage = result.usage and [result.usage.prompt_tokens, result.usage.completion_tokens]
    check(
        path,
        case,
        {"completion": json.loads(result.body), "usage": usage, "served_model": result.served_model},
    )


@pytest.mark.parametrize(("path", "case"), cases("stream"))
def test_stream(path: Path, case: dict[str, Any]) -> None:
    translator = ChunkTranslator(
        "asked-model", case.get("json_tool"), case.get("include_usage", False), CREATED
    )
    chunks = [read(out) for event in case["input"] for out in translator.feed(encode(event))]
    assert translator.done
    usage = translator.usage and [translator.usage.prompt_tokens, translator.usage.completion_tokens]
    check(path, case, {"chunks": chunks, "usage": usage, "served_model": translator.served_model})


def _assembled(chunks: list[Any]) -> tuple[str, dict[int, dict[str, str]]]:
    """A stream's text and tool calls, put together as the openai SDK does."""
    text, calls = "", {}
    for chunk in chunks:
        for choice in chunk["choices"] if isinstance(chunk, dict) else []:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = (call.get("function") or {}).get("name") or entry["name"]
                entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
    return text, calls


@pytest.mark.parametrize(("path", "case"), cases("stream"))
def test_stream_assembles_to_the_message(path: Path, case: dict[str, Any]) -> None:
    """The streamed pieces put together are what the same answer gives as one Message: the same text and
    the same tool calls, with arguments that parse to the same input."""
    if "message" not in case:
        pytest.skip("no Message form")
    translator = ChunkTranslator("m", case.get("json_tool"), False, CREATED)
    text, calls = _assembled([read(out) for event in case["input"] for out in translator.feed(encode(event))])
    whole = json.loads(
        parse_response(orjson.dumps(case["message"]), "m", case.get("json_tool"), CREATED).body
    )
    message = whole["choices"][0]["message"]
    if case.get("json_tool"):
        assert json.loads(text) == json.loads(message["content"])
    else:
        assert text == (message["content"] or "")
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or []
    ]


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}


def test_error_event_mid_stream_raises() -> None:
    translator = ChunkTranslator("m", None, False, CREATED)
    assert translator.feed(encode(MESSAGE_START))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamFailure) as err:
        translator.feed(encode(error))
    assert err.value.kind is FailureKind.SERVER and "overloaded_error" in err.value.message
    assert not translator.done and translator.usage is None  # never reported: the service estimates it


def test_keep_alives_and_unknown_events_are_dropped() -> None:
    translator = ChunkTranslator("m", None, False, CREATED)
    assert translator.feed(b": keep-alive\n\n") == []
    assert translator.feed(encode({"type": "ping"})) == []
    assert translator.feed(encode({"type": "some_future_event", "x": 1})) == []
    with pytest.raises(UpstreamFailure) as err:
        translator.feed(b"event: message_start\ndata: {not json\n\n")
    assert err.value.kind is FailureKind.BAD_RESPONSE


def test_passthrough_relay_keeps_bytes_and_notes_usage() -> None:
    relay = PassthroughRelay("asked")
    events = [
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    for event in events:
        assert relay.feed(encode(event)) == [encode(event)]
    assert relay.done and relay.served_model == "claude-sonnet-4-5"
    assert relay.usage is not None and (relay.usage.prompt_tokens, relay.usage.completion_tokens) == (5, 3)


def test_passthrough_request_and_response_are_anthropic_bytes() -> None:
    body = {
        "model": "claude",
        "models": ["other"],
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "cache_control": {"type": "ephemeral"},
    }
    req = provider(base_url="http://127.0.0.1:9/v1").build_passthrough_request(
        ChatCall(body, "claude-haiku-4-5", True, KEY, 10)
    )
    assert req.url == "http://127.0.0.1:9/v1/messages"  # a base_url written with /v1 works the same
    sent = json.loads(req.body)
    assert sent == {**{k: v for k, v in body.items() if k != "models"}, "model": "claude-haiku-4-5"}
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    message = {
        **MESSAGE_START["message"],
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
    }
    raw = orjson.dumps(message)
    result = parse_passthrough(raw, "asked")
    assert result.body == raw and result.served_model == "claude-sonnet-4-5"
    assert result.usage is not None and result.usage.prompt_tokens == 5


@pytest.mark.parametrize("body", [b"not json", b'{"type": "error"}', b'{"choices": []}'])
def test_a_body_that_is_no_message_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(UpstreamFailure) as err:
        parse_response(body, "m", None)
    assert err.value.kind is FailureKind.BAD_RESPONSE


def _headers(raw: dict[str, str]) -> Headers:
    headers = Headers()
    for name, value in raw.items():
        headers[name.lower()] = value
    return headers


def _error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (401, {}, _error("authentication_error", f"invalid x-api-key {KEY}"), "auth", None),
        (403, {}, _error("permission_error", "no"), "forbidden", None),
        (429, {"retry-after": "7"}, _error("rate_limit_error", "slow down"), "rate_limit", 7.0),
        (429, {}, _error("rate_limit_error", "slow down"), "rate_limit", None),
        (500, {}, _error("api_error", "Internal server error"), "server", None),
        (529, {}, _error("overloaded_error", "Overloaded"), "server", None),
        (413, {}, _error("request_too_large", "too large"), "bad_request", None),
        (400, {}, _error("invalid_request_error", f"bad key {KEY[4:20]} in messages"), "bad_request", None),
        (400, {}, b"<html>", "bad_request", None),
    ],
)
def test_error_classification(
    status: int, headers: dict[str, str], body: bytes, kind: str, retry_after: float | None
) -> None:
    failure = provider().classify_error(status, _headers(headers), body, KEY)
    assert (
        failure.kind is FailureKind(kind) and failure.retry_after == retry_after and failure.status == status
    )
    for value in (failure.message, failure.error_code or "", failure.param or ""):
        assert all(KEY[i : i + 8] not in value for i in range(len(KEY) - 7))  # never the key, nor 8 of it


def test_bad_request_relays_anthropic_message_and_type() -> None:
    body = _error("invalid_request_error", "max_tokens: Field required")
    failure = provider().classify_error(400, Headers(), body, KEY)
    assert (failure.message, failure.error_code, failure.param) == (
        "max_tokens: Field required",
        "invalid_request_error",
        None,
    )
