"""Conformance of the Anthropic Messages <-> chat completions translation (protocols/messages.py).

Each fixture in fixtures/ is one case, written from Anthropic's Messages API and streaming references and
OpenAI's chat completions references (each names its sources):

- `request_*` / `refused_*`: a Messages request -> the chat request portway serves it with, or the 400
  (code and param) it is refused with;
- `response_*`: the upstream's chat.completion -> the client's Anthropic message;
- `stream_*`: the chat stream's events -> the client's Anthropic events. An upstream event is a JSON object
  (one `data:` line), the string "[DONE]", or {"raw": "..."} for bytes passed as they are (an SSE comment);
  a client event is its data object (its `event:` line must name the data's `type`, as Anthropic sends).

Every stream case is also checked for what a client relies on whatever the case: the event grammar
(message_start first; content blocks started, filled and stopped in order, one at a time; message_delta then
message_stop last, or an error event last), and that each tool_use block's joined input_json_delta pieces
are its upstream call's arguments, character for character.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from portway.api.validation import validate_chat
from portway.errors import PortwayError
from portway.protocols.messages import (
    MessagesStream,
    chat_request,
    error_body,
    error_type,
    message,
    passthrough_event,
)
from portway.providers.sse import error_event
from tests.conformance.fixtures import cases, fixtures, wire

FIXTURES = fixtures(__file__)


def _cases(kind: str) -> list[Any]:
    return cases(FIXTURES, kind)


def _read(event: bytes) -> dict[str, Any]:
    """An Anthropic event: `event: <type>` then one data line, its `type` the same."""
    assert event.endswith(b"\n\n") and event.count(b"\n") == 3, event
    name, data = event[:-2].split(b"\n")
    assert name.startswith(b"event: ") and data.startswith(b"data: "), event
    obj: dict[str, Any] = orjson.loads(data[6:])
    assert obj["type"] == name[7:].decode(), event
    return obj


def _translate(case: dict[str, Any]) -> list[dict[str, Any]]:
    translate = MessagesStream(
        case["model"], fallback_id="req", stop_sequences=case.get("stop_sequences", ())
    )
    out: list[bytes] = []
    for event in case["upstream_events"]:
        out += translate.feed(wire(event))
    out += translate.close()  # what the route does when the chat stream ends
    assert translate.close() == [], "the tail is sent once"
    return [_read(e) for e in out]


def test_every_fixture_has_a_known_kind_and_references() -> None:
    cases = [json.loads(p.read_text()) for p in FIXTURES]
    assert {c["kind"] for c in cases} == {"request", "response", "stream"}
    assert all(c["references"] and c["description"] for c in cases)
    assert len(FIXTURES) >= 50


@pytest.mark.parametrize("case", _cases("request"))
def test_request(case: dict[str, Any]) -> None:
    body = json.loads(json.dumps(case["request"]))  # a fresh copy: the translator must not change it
    if "error" in case:
        with pytest.raises(PortwayError) as info:
            validate_chat(chat_request(body))
        err = info.value
        assert (err.status_code, err.code, err.param) == (
            case["error"]["status"],
            case["error"]["code"],
            case["error"]["param"],
        ), err.message
        return
    chat = validate_chat(chat_request(body))
    assert chat == case["upstream_request"]
    assert body == case["request"], "the client's request was changed"


@pytest.mark.parametrize("case", _cases("response"))
def test_response(case: dict[str, Any]) -> None:
    out = message(
        case["upstream_response"],
        model=case["model"],
        fallback_id="req",
        stop_sequences=case.get("stop_sequences", ()),
    )
    assert out == case["client_response"]


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream(case: dict[str, Any]) -> None:
    assert _translate(case) == case["client_events"]


def _upstream_arguments(case: dict[str, Any]) -> dict[int, str]:
    args: dict[int, str] = {}
    for event in case["upstream_events"]:
        if not isinstance(event, dict) or "choices" not in event:
            continue
        for choice in event["choices"]:
            for call in (choice.get("delta") or {}).get("tool_calls") or ():
                piece = (call.get("function") or {}).get("arguments") or ""
                args[call["index"]] = args.get(call["index"], "") + piece
    return args


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream_grammar_and_tool_arguments(case: dict[str, Any]) -> None:
    events = _translate(case)
    kinds = [e["type"] for e in events]
    if kinds[-1] == "error":
        assert "message_stop" not in kinds and kinds.count("error") == 1
        kinds = kinds[:-1]
    else:
        assert kinds[-2:] == ["message_delta", "message_stop"] and kinds.count("message_delta") == 1
    if kinds:
        assert kinds[0] == "message_start" and kinds.count("message_start") == 1
    open_block: int | None = None
    started: list[int] = []
    joined: dict[int, str] = {}
    tool_blocks: list[int] = []
    for e in events:
        if e["type"] == "content_block_start":
            assert open_block is None and e["index"] == len(started), "one block at a time, in order"
            open_block = e["index"]
            started.append(e["index"])
            if e["content_block"]["type"] == "tool_use":
                tool_blocks.append(e["index"])
                joined[e["index"]] = ""
        elif e["type"] == "content_block_delta":
            late = e["index"] != open_block  # a piece of an earlier, interleaved call (documented)
            assert not late or case.get("late_deltas"), e
            if e["delta"]["type"] == "input_json_delta":
                joined[e["index"]] += e["delta"]["partial_json"]
        elif e["type"] == "content_block_stop":
            assert e["index"] == open_block
            open_block = None
        elif e["type"] == "message_delta":
            assert open_block is None, "every block stops before message_delta"
    upstream = _upstream_arguments(case)
    assert [joined[b] for b in tool_blocks] == [upstream[i] for i in sorted(upstream)]


def test_stream_drops_data_that_is_not_a_json_object() -> None:
    translate = MessagesStream("m", fallback_id="req")
    assert translate.feed(b"data: not json\n\n") == []
    assert translate.feed(b"data: [1, 2]\n\n") == []
    assert not translate.started


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (415, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types_follow_anthropics_status_table(status: int, kind: str) -> None:
    assert error_type(status) == kind
    body = error_body(status, "went wrong", "req_1")
    assert body == {"type": "error", "error": {"type": kind, "message": "went wrong"}, "request_id": "req_1"}


def test_passthrough_events_pass_as_they_came_but_portways_error_event() -> None:
    own = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{}}\n\n'
    assert passthrough_event(own) is own
    broken = error_event("upstream stream interrupted: reset", "upstream_error", "upstream_error")
    assert _read(passthrough_event(broken)) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream stream interrupted: reset"},
    }
