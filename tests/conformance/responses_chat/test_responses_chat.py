"""Conformance of the Responses API <-> chat completions translation (protocols/responses.py).

Each fixture in fixtures/ is one case, written from OpenAI's references for both APIs (the Responses API
reference and the openai SDK's types for the Response object and its stream events):

- `request_*` / `refused_*`: a Responses request (and, for `previous_response_id`, the stored `history`)
  -> the chat request portway serves it with, or the 400 (code and param) it is refused with;
- `response_*`: the upstream's chat.completion -> the client's Response object;
- `stream_*`: the chat stream's events -> the client's Responses events. An upstream event is a JSON object
  (one `data:` line), the string "[DONE]", or {"raw": "..."} for bytes passed as they are (an SSE comment);
  a client event is the `data:` object, whose `type` the `event:` line must name.

Ids are made by a counter (`msg_1`, `fc_2`, ...), `created_at` is 1700000000 and `completed_at` 1700000001.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from portway.errors import PortwayError
from portway.protocols.responses import (
    chat_request,
    read_request,
    response_from_chat,
)
from portway.protocols.responses_stream import StreamTranslator
from portway.providers.sse import encode_event
from tests.conformance.fixtures import cases, fixtures, wire

FIXTURES = fixtures(__file__)
CREATED, COMPLETED = 1700000000, 1700000001


def _cases(kind: str) -> list[Any]:
    return cases(FIXTURES, kind)


def counter() -> Callable[[str], str]:
    n = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(n)}"


def _read(event: bytes) -> list[dict[str, Any]]:
    """Responses events as the fixtures write them, each checked to be `event: <type>` + one data line."""
    out = []
    for block in event.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: "), block
        obj = orjson.loads(data[6:])
        assert obj["type"] == name[7:].decode(), block
        out.append(obj)
    assert event.endswith(b"\n\n"), event
    return out


def test_every_fixture_has_a_known_kind() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in FIXTURES}
    assert kinds == {"request", "response", "stream"}
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("case", _cases("request"))
def test_request(case: dict[str, Any]) -> None:
    body = json.loads(json.dumps(case["request"]))  # a fresh copy: the translator must not need it kept
    if "error" in case:
        with pytest.raises(PortwayError) as info:
            chat_request(read_request(body, CREATED, counter()), case.get("history"))
        err = info.value
        assert (err.status_code, err.code, err.param) == (
            case["error"]["status"],
            case["error"]["code"],
            case["error"]["param"],
        ), err.message
        return
    req = read_request(body, CREATED, counter())
    assert chat_request(req, case.get("history")) == case["upstream_request"]
    assert body == case["request"], "the client's request was changed"
    if "input_items" in case:
        assert req.input_items == case["input_items"]


@pytest.mark.parametrize("case", _cases("response"))
def test_response(case: dict[str, Any]) -> None:
    ids = counter()
    req = read_request(json.loads(json.dumps(case["request"])), CREATED, ids)
    out = response_from_chat(req, orjson.dumps(case["upstream_response"]), COMPLETED, ids)
    assert out == case["client_response"]


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream(case: dict[str, Any]) -> None:
    ids = counter()
    translator = StreamTranslator(read_request(json.loads(json.dumps(case["request"])), CREATED, ids), ids)
    events: list[dict[str, Any]] = []
    for upstream in case["upstream_events"]:
        for sent in translator.feed(wire(upstream)):
            events += _read(sent)
    for sent in translator.close(COMPLETED):
        events += _read(sent)
    assert events == case["client_events"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    terminal = events[-1]
    assert terminal["type"] in ("response.completed", "response.incomplete", "response.failed")
    assert terminal["response"] == json.loads(json.dumps(translator.response))  # what is stored


def test_stream_drops_data_that_is_not_a_json_object() -> None:
    translator = StreamTranslator(read_request({"model": "m", "input": "hi"}, CREATED, counter()))
    assert translator.feed(b"data: not json\n\n") == []
    assert translator.feed(b"data: [1, 2]\n\n") == []
    assert not translator.started


def test_stream_ends_once() -> None:
    translator = StreamTranslator(read_request({"model": "m", "input": "hi"}, CREATED, counter()))
    first = translator.close(COMPLETED)
    assert [e["type"] for sent in first for e in _read(sent)] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert translator.close(COMPLETED) == []
    assert translator.feed(encode_event({"choices": [{"index": 0, "delta": {"content": "late"}}]})) == []


def test_streamed_and_plain_answers_agree() -> None:
    """The same answer, streamed or not, ends in the same output (ids aside)."""
    body = {
        "model": "gpt-4o",
        "input": "Weather?",
        "tools": [{"type": "function", "name": "w", "strict": None, "parameters": {"type": "object"}}],
    }
    call = {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}}
    message = {"role": "assistant", "content": "Checking.", "tool_calls": [call]}
    plain = {"model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    full = response_from_chat(
        read_request(body, CREATED, counter()), orjson.dumps(plain), COMPLETED, counter()
    )
    translator = StreamTranslator(read_request(body, CREATED, counter()), counter())
    for delta in (
        {"content": "Check"},
        {"content": "ing."},
        {"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "w", "arguments": '{"a"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]},
    ):
        translator.feed(encode_event({"model": "m", "choices": [{"index": 0, "delta": delta}]}))
    translator.feed(
        encode_event({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    )
    translator.close(COMPLETED)

    def strip(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in item.items() if k != "id"} for item in items]

    assert strip(translator.response["output"]) == strip(full["output"])
