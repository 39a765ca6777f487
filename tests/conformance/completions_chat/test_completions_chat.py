"""Conformance of the legacy completions <-> chat completions translation (protocols/completions.py).

Each fixture in fixtures/ is one case, written from OpenAI's references for both APIs:

- `request_*` / `refused_*`: a completions request -> the chat request portway serves it with, or the 400
  (code and param) it is refused with;
- `response_*`: the upstream's chat.completion -> the client's text_completion;
- `stream_*`: the chat stream's events -> the client's events. An event is a JSON object (one `data:`
  line), the string "[DONE]", or {"raw": "..."} for bytes passed as they are (an SSE comment).

Tools, images, system prompts and JSON-schema output have no place in the legacy completions API: their
fields are refused (`refused_tools`, `refused_messages`), not translated.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from portway.api.validation import validate_chat
from portway.errors import PortwayError
from portway.protocols.completions import CompletionStream, chat_request, completion_body
from tests.conformance.fixtures import cases, fixtures, wire

FIXTURES = fixtures(__file__)


def _cases(kind: str) -> list[Any]:
    return cases(FIXTURES, kind)


def _read(event: bytes) -> Any:
    """An event as the fixtures write it."""
    if not event.startswith(b"data: "):
        return {"raw": event.decode()}
    assert event.endswith(b"\n\n") and event.count(b"\n") == 2, event  # one data line, one event
    data = event[6:-2]
    return "[DONE]" if data == b"[DONE]" else orjson.loads(data)


def test_every_fixture_has_a_known_kind() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in FIXTURES}
    assert kinds == {"request", "response", "stream"}
    assert len(FIXTURES) >= 30


@pytest.mark.parametrize("case", _cases("request"))
def test_request(case: dict[str, Any]) -> None:
    body = json.loads(json.dumps(case["request"]))  # a fresh copy: the translator must not need it kept
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
    out = completion_body(orjson.dumps(case["upstream_response"]))
    assert orjson.loads(out) == case["client_response"]


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream(case: dict[str, Any]) -> None:
    translate = CompletionStream()
    sent = [translate.event(wire(e)) for e in case["upstream_events"]]
    assert [_read(e) for e in sent if e is not None] == case["client_events"]


def test_stream_drops_data_that_is_not_a_json_object() -> None:
    translate = CompletionStream()
    assert translate.event(b"data: not json\n\n") is None
    assert translate.event(b"data: [1, 2]\n\n") is None
