"""Conformance of chat completions <-> Google's Gemini API (providers/gemini_translate.py, gemini_schema.py).

Each fixture in fixtures/ is one case, written from OpenAI's chat completions reference and Google's
generateContent reference:

- `request_*` / `refused_*`: a chat completions request -> the GenerateContentRequest portway sends (which the
  fake Gemini upstream, checking as Google checks, must accept), or the failure (kind and param) it is refused
  with before any upstream call; `schemas` names the provider option when it is not the default;
- `response_*`: Gemini's GenerateContentResponse -> the client's chat.completion (tool call ids numbered
  `call_1`, `call_2`… here; generated in production);
- `stream_*`: the events of `streamGenerateContent?alt=sse` -> the client's chat.completion.chunk events (the
  string "[DONE]" for the end), or the failure the stream ends with (portway relays it as an SSE error event).

Covered: plain text, multi-turn, system prompts, images and other media, tools and every tool_choice,
parallel tool calls, tool results fed back (named after their calls, thought signatures kept), JSON-schema
output, stop reasons (stop, length, tool_calls, content_filter), usage with cached and reasoning tokens,
errors mid-stream, a cut stream and an empty answer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.gemini_translate import StreamTranslator, build_body, completion_from
from portway.providers.sse import DONE_EVENT
from tests.conformance.fixtures import cases, fixtures
from tests.fakes.gemini import invalid

FIXTURES = fixtures(__file__)


def _cases(kind: str) -> list[Any]:
    return cases(FIXTURES, kind)


def _ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"call_{next(counter)}"


def _read(event: bytes) -> Any:
    if event == DONE_EVENT:
        return "[DONE]"
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2, event
    return orjson.loads(event[6:-2])


def test_every_fixture_has_a_known_kind() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in FIXTURES}
    assert kinds == {"request", "response", "stream"}
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("case", _cases("request"))
def test_request(case: dict[str, Any]) -> None:
    body = json.loads(json.dumps(case["request"]))  # a fresh copy: the client's request must stay as sent
    schemas = case.get("schemas", "translate")
    if "error" in case:
        with pytest.raises(UpstreamFailure) as info:
            build_body(body, schemas)
        assert (info.value.kind, info.value.param) == (
            FailureKind(case["error"]["kind"]),
            case["error"]["param"],
        )
        return
    wire = build_body(body, schemas)
    assert wire == case["upstream_request"]
    assert body == case["request"], "the client's request was changed"
    assert invalid(wire, "gemini-think") is None  # what Google would refuse, the fake refuses


@pytest.mark.parametrize("case", _cases("response"))
def test_response(case: dict[str, Any]) -> None:
    assert completion_from(case["upstream_response"], "requested-model", _ids(), 0) == case["response"]


@pytest.mark.parametrize("case", _cases("stream"))
def test_stream(case: dict[str, Any]) -> None:
    translator = StreamTranslator("requested-model", case["include_usage"], _ids(), 1700000000)
    got: list[Any] = []
    try:
        for event in case["upstream_events"]:
            got += [_read(chunk) for chunk in translator.feed(event)]
        got += [_read(chunk) for chunk in translator.end()]
    except UpstreamFailure as failure:
        assert "error" in case, f"unexpected failure: {failure.message}"
        assert failure.kind is FailureKind(case["error"]["kind"])
    else:
        assert "error" not in case, "the stream should have failed"
    assert got == case["events"]
