"""The Gemini adapter: what it puts on the wire, how it reads answers and streams, how it classifies errors.

Golden files (tests/contract/golden/gemini_*.json): the upstream inputs (`gemini_response.json`,
`gemini_stream_events.json`) are written from Google's API reference; the outputs are checked in and reviewed.
Set PORTWAY_UPDATE_GOLDEN=1 to rewrite the outputs after an intended change; review the diff. One case per
behaviour (every tool_choice, media, stop reasons, empty and blocked answers, cut streams...) is in
tests/conformance/chat_gemini/.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from portway.http.client import Transport
from portway.http.connection import Headers
from portway.providers import gemini, gemini_translate
from portway.providers.base import ChatCall, FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.gemini import GeminiProvider, classify_error
from portway.providers.gemini_schema import function_declaration, to_gemini
from portway.providers.gemini_translate import StreamTranslator, build_body
from portway.providers.registry import provider_class
from portway.providers.sse import DONE_EVENT

GOLDEN = Path(__file__).parent / "golden"
KEY = "AIzaSy-upstream-0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "city name", "minLength": 1},
        "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14, "exclusiveMaximum": 15},
        "when": {"type": "string", "format": "date-time"},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["city", "ghost"],
    "additionalProperties": False,
}
REPORT = {
    "type": "object",
    "$defs": {
        "Place": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "rank": {"enum": [1, 2, 3]}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "summary": {"type": "string"},
        "places": {"type": "array", "items": {"$ref": "#/$defs/Place"}, "maxItems": 5},
        "best": {"anyOf": [{"$ref": "#/$defs/Place"}, {"type": "null"}], "description": "the best one"},
        "kind": {"const": "report"},
        "score": {"oneOf": [{"type": "number"}, {"type": "string"}]},
    },
    "required": ["summary", "places"],
    "additionalProperties": False,
}
PAYLOAD: dict[str, Any] = {
    "model": "gem",
    "models": ["other"],
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "answer in English"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this picture, and the weather there?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    "extra_content": {"google": {"thought_signature": "c2lnLTE="}},
                },
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "and tomorrow? ü"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": WEATHER,
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
        },
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": True,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "report", "schema": REPORT, "strict": True},
    },
    "temperature": 0.3,
    "top_p": 0.9,
    "max_completion_tokens": 256,
    "max_tokens": 64,
    "stop": "END",
    "seed": 7,
    "n": 1,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.25,
    "stream_options": {"include_usage": True},
    "user": "u-1",
    "store": False,
    "metadata": {"k": "v"},
}


def _provider(**options: Any) -> GeminiProvider:
    settings = ProviderSettings(
        "gem", "gemini", gemini.DEFAULT_BASE_URL, headers={"X-Title": "portway"}, options=options
    )
    return GeminiProvider(settings, Transport())


def _check(name: str, actual: Any) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    assert path.exists(), f"missing golden file {path.name}: run with PORTWAY_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(path.read_text())


def _wire(provider: GeminiProvider, payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    req = provider.build_chat_request(ChatCall(payload, "gemini-2.5-flash", stream, KEY, 10))
    return {"method": req.method, "url": req.url, "headers": req.headers, "body": json.loads(req.body)}


def _ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"call_{next(counter)}"


def _events(chunks: list[bytes]) -> list[Any]:
    return [c.decode() if c == DONE_EVENT else json.loads(c.removeprefix(b"data: ")) for c in chunks]


# -- requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_chat_request(stream: bool) -> None:
    _check(f"gemini_chat_{'stream' if stream else 'plain'}_request", _wire(_provider(), PAYLOAD, stream))


def test_chat_request_json_schema_mode() -> None:
    wire = _wire(_provider(schemas="json_schema", api_version="v1"), PAYLOAD, False)
    _check("gemini_chat_json_schema_mode_request", wire)
    assert wire["url"].startswith("https://generativelanguage.googleapis.com/v1/models/")


def test_key_only_in_its_header() -> None:
    for stream in (False, True):
        wire = _wire(_provider(), PAYLOAD, stream)
        assert wire["headers"]["x-goog-api-key"] == KEY
        assert KEY not in wire["url"] and "key=" not in wire["url"]
        assert "Authorization" not in wire["headers"]


def test_request_schema_translation_drops_what_gemini_refuses() -> None:
    body = build_body(PAYLOAD)
    weather = body["tools"][0]["functionDeclarations"][0]["parameters"]
    text = json.dumps(body)
    for word in (
        "additionalProperties",
        "$schema",
        "$ref",
        "$defs",
        "exclusiveMaximum",
        "oneOf",
        "const",
        "strict",
    ):
        assert word not in text, word
    assert weather["required"] == ["city"]  # a required name with no property is dropped
    assert weather["properties"]["unit"] == {
        "type": "STRING",
        "enum": ["celsius", "fahrenheit"],
        "nullable": True,
    }
    assert "format" not in weather["properties"]["email"]  # Gemini knows date-time and enum on strings
    assert weather["properties"]["when"]["format"] == "date-time"
    assert "parameters" not in body["tools"][0]["functionDeclarations"][1]  # no properties: no parameters
    report = body["generationConfig"]["responseSchema"]
    assert report["properties"]["places"]["items"]["properties"]["rank"] == {
        "type": "INTEGER",
        "enum": ["1", "2", "3"],
        "format": "enum",
    }
    assert report["properties"]["best"]["nullable"] is True
    assert report["properties"]["best"]["description"] == "the best one"
    assert report["propertyOrdering"] == ["summary", "places", "best", "kind", "score"]


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, {"type": "STRING"}),
        ({"type": ["integer", "null"]}, {"type": "INTEGER", "nullable": True}),
        ({"type": ["integer", "string"]}, {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]}),
        ({"enum": ["a", "b"]}, {"type": "STRING", "enum": ["a", "b"]}),
        ({"enum": [True, False]}, {"type": "STRING"}),  # not expressible as a Gemini enum: dropped
        (
            {"items": {"type": "number", "format": "double"}},
            {"type": "ARRAY", "items": {"type": "NUMBER", "format": "double"}},
        ),
        (
            {"type": "array", "items": [{"type": "string"}], "prefixItems": []},
            {"type": "ARRAY", "items": {"type": "STRING"}},
        ),
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {}}},
                ]
            },
            {
                "type": "OBJECT",
                "properties": {"a": {"type": "STRING"}, "b": {}},
                "required": ["a"],
                "propertyOrdering": ["a", "b"],
            },
        ),
        (
            {
                "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
                "$ref": "#/$defs/N",
            },
            {"type": "OBJECT", "properties": {"next": {"type": "OBJECT"}}},  # recursion ends in a bare OBJECT
        ),
        ({"$ref": "#/definitions/missing"}, {"type": "OBJECT"}),
        (
            {"type": "string", "examples": ["x"], "default": "y", "title": "T"},
            {"type": "STRING", "default": "y", "title": "T"},
        ),
        (
            {"anyOf": [{"type": "null"}, {"type": "boolean"}], "description": "d"},
            {"type": "BOOLEAN", "description": "d", "nullable": True},
        ),
    ],
)
def test_schema_translation(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_gemini(schema) == expected


def test_json_schema_mode_sends_the_schema_as_is() -> None:
    decl = function_declaration({"name": "f", "parameters": WEATHER}, "json_schema")
    assert decl["parametersJsonSchema"] == {k: v for k, v in WEATHER.items() if k != "$schema"}


def test_tool_results_are_named_after_their_calls_and_share_one_turn() -> None:
    contents = build_body(PAYLOAD)["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert [p["functionResponse"] for p in contents[2]["parts"]] == [
        {"name": "get_time", "response": {"output": "12:00"}},
        {"name": "get_weather", "response": {"temp": 21, "sky": "clear"}},
    ]
    calls = contents[1]["parts"]
    assert calls[0]["thoughtSignature"] == "c2lnLTE=" and "thoughtSignature" not in calls[1]


def test_a_history_without_signatures_gets_the_placeholder() -> None:
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x", "content": "[1, 2]"},
    ]
    contents = build_body({"messages": msgs})["contents"]
    assert contents[1]["parts"][0]["thoughtSignature"] == gemini_translate.SKIP_SIGNATURE
    assert contents[2]["parts"][0]["functionResponse"]["response"] == {"output": [1, 2]}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], "messages[0].tool_call_id"),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}],
                }
            ],
            "messages[0].content[0]",
        ),
        ([{"role": "user", "content": [{"type": "video", "video": {}}]}], "messages[0].content[0]"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        ([{"role": "critic", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": ""}], "messages"),
    ],
)
def test_requests_gemini_cannot_take_are_400s(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(UpstreamFailure) as info:
        build_body({"messages": messages})
    assert info.value.kind is FailureKind.BAD_REQUEST and info.value.param == param


@pytest.mark.parametrize(
    ("base_url", "model", "url"),
    [
        (
            "https://g.example",
            "gemini-2.5-flash",
            "https://g.example/v1beta/models/gemini-2.5-flash:generateContent",
        ),
        (
            "https://g.example/v1beta/",
            "models/gemini-pro",
            "https://g.example/v1beta/models/gemini-pro:generateContent",
        ),
        (
            "https://g.example",
            "tunedModels/my model",
            "https://g.example/v1beta/tunedModels/my%20model:generateContent",
        ),
        ("https://g.example", "x?key=1#y", "https://g.example/v1beta/models/x%3Fkey%3D1%23y:generateContent"),
    ],
)
def test_urls(base_url: str, model: str, url: str) -> None:
    provider = GeminiProvider(ProviderSettings("g", "gemini", base_url), Transport())
    assert (
        provider.build_chat_request(
            ChatCall({"messages": [{"role": "user", "content": "x"}]}, model, False, "k", 1)
        ).url
        == url
    )


def test_declarations() -> None:
    cls = provider_class("gemini")
    assert cls is GeminiProvider and cls.default_base_url == "https://generativelanguage.googleapis.com"
    assert cls.needs_key and not cls.free
    with pytest.raises(ValueError):
        cls.Options.model_validate({"api_version": "v1beta/../x"})
    with pytest.raises(ValueError):
        cls.Options.model_validate({"schemas": "loose"})


# -- answers -------------------------------------------------------------------------------------------


def test_response_parse() -> None:
    body = (GOLDEN / "gemini_response.json").read_bytes()
    result = _provider().parse_chat_response(body, "asked-model", _ids())
    completion = json.loads(result.body)
    completion["created"] = 0
    _check("gemini_completion", completion)
    assert result.served_model == "gemini-2.5-flash-001"
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        40,
        27,
    )


@pytest.mark.parametrize(
    ("reason", "called", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, called: bool, expected: str) -> None:
    assert gemini_translate.finish_reason(reason, called) == expected


def test_usage_mapping() -> None:
    meta = {
        "promptTokenCount": 100,
        "toolUsePromptTokenCount": 10,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "cachedContentTokenCount": 64,
        "totalTokenCount": 160,
    }
    assert gemini_translate.usage_from(meta) == {
        "prompt_tokens": 110,
        "completion_tokens": 50,
        "total_tokens": 160,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert gemini_translate.usage_from(None) is None


@pytest.mark.parametrize(
    ("answer", "content", "reason"),
    [
        (
            {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}},
            "",
            "content_filter",
        ),
        ({"candidates": [{"content": {"role": "model"}, "finishReason": "STOP"}]}, "", "stop"),
        ({"candidates": [{"finishReason": "SAFETY", "index": 0}]}, "", "content_filter"),
    ],
)
def test_empty_and_blocked_answers(answer: dict[str, Any], content: str, reason: str) -> None:
    completion = json.loads(_provider().parse_chat_response(orjson.dumps(answer), "m").body)
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": reason,
        }
    ]


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"text": "hi"}'])
def test_not_an_answer(body: bytes) -> None:
    with pytest.raises(UpstreamFailure) as info:
        _provider().parse_chat_response(body, "m")
    assert info.value.kind is FailureKind.BAD_RESPONSE


def test_stream_translation() -> None:
    events = json.loads((GOLDEN / "gemini_stream_events.json").read_text())
    translator = StreamTranslator("asked-model", include_usage=True, new_id=_ids(), created=1700000000)
    chunks = [c for e in events for c in translator.feed(e)] + translator.end()
    _check("gemini_stream_chunks", _events(chunks))
    assert translator.usage is not None and translator.usage["completion_tokens"] == 12
    out = _events(chunks)
    args = [
        tc["function"]["arguments"]
        for c in out[:-1]
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    ]
    assert [json.loads(a) for a in args] == [{"city": "Paris", "days": 2}, {"city": "Zürich"}]


def test_stream_without_usage_request_sends_no_usage_chunk() -> None:
    translator = StreamTranslator("m", include_usage=False, created=1)
    event = {
        "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1},
    }
    out = _events(translator.feed(event) + translator.end())
    assert out[-1] == DONE_EVENT.decode() and all(c["choices"] for c in out[:-1])
    assert translator.usage is not None and translator.usage["total_tokens"] == 2


def test_stream_error_event_mid_way() -> None:
    translator = StreamTranslator("m", include_usage=False, created=1)
    translator.feed({"candidates": [{"content": {"parts": [{"text": "hel"}]}}]})
    with pytest.raises(UpstreamFailure) as info:
        translator.feed({"error": {"code": 503, "message": f"overloaded for {KEY}", "status": "UNAVAILABLE"}})
    assert info.value.kind is FailureKind.SERVER and KEY not in info.value.message


# -- errors --------------------------------------------------------------------------------------------


def _google(status: int, google: str, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    err: dict[str, Any] = {"code": status, "message": message, "status": google}
    if details is not None:
        err["details"] = details
    return orjson.dumps({"error": err})


INVALID_KEY = _google(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
    ],
)
QUOTA = _google(
    429,
    "RESOURCE_EXHAUSTED",
    f"quota exceeded for key {KEY}",
    [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
)


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (400, {}, INVALID_KEY, "auth", None),
        (401, {}, _google(401, "UNAUTHENTICATED", "no"), "auth", None),
        (403, {}, _google(403, "PERMISSION_DENIED", f"key {KEY} may not"), "forbidden", None),
        (429, {}, QUOTA, "rate_limit", 37.0),
        (429, {"Retry-After": "3"}, QUOTA, "rate_limit", 3.0),
        (429, {}, b"{}", "rate_limit", None),
        (500, {}, _google(500, "INTERNAL", "oops"), "server", None),
        (503, {}, _google(503, "UNAVAILABLE", "overloaded"), "server", None),
        (504, {}, b"gateway timeout", "server", None),
        (400, {}, _google(400, "INVALID_ARGUMENT", "bad schema"), "bad_request", None),
        (404, {}, _google(404, "NOT_FOUND", "models/x is not found"), "bad_request", None),
    ],
)
def test_error_classification(
    status: int, headers: dict[str, str], body: bytes, kind: str, retry_after: float | None
) -> None:
    raw = Headers()
    for name, value in headers.items():
        raw[name.lower()] = value
    failure = classify_error(status, raw, body, KEY)
    assert failure.kind is FailureKind(kind) and failure.retry_after == retry_after
    assert KEY[:8] not in failure.message  # nothing of the key is ever relayed


def test_bad_request_relays_google_message_and_status_without_the_key() -> None:
    body = _google(400, "INVALID_ARGUMENT", f"* contents[0]: bad part (key {KEY[4:20]})")
    failure = classify_error(400, Headers(), body, KEY)
    assert failure.error_code == "INVALID_ARGUMENT" and failure.message.startswith("* contents[0]: bad part")
    for i in range(len(KEY) - 7):
        assert KEY[i : i + 8] not in failure.message
    array = b"[" + _google(400, "INVALID_ARGUMENT", "in an array") + b"]"  # the non-SSE stream's error form
    assert classify_error(400, Headers(), array, KEY).message == "in an array"


@pytest.mark.parametrize("schemas", ["translate", "json_schema"])
def test_translated_requests_pass_the_fakes_gemini_checks(schemas: Any) -> None:
    """The fake upstream refuses what Gemini refuses (tests/fakes/gemini.py): the golden request passes."""
    from tests.fakes.gemini import invalid

    assert invalid(build_body(PAYLOAD, schemas), "gemini-think") is None
    assert invalid({"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "m") is not None
    refused = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": WEATHER}]}],
    }
    assert "additionalProperties" in (invalid(refused, "m") or "") or "$schema" in (
        invalid(refused, "m") or ""
    )
