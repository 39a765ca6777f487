"""Golden payloads: what each provider adapter puts on the wire, and how it reads the answer.

Set PORTWAY_UPDATE_GOLDEN=1 to rewrite the files after an intended change; review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from portway.http.client import Transport
from portway.http.connection import Headers
from portway.providers.base import ChatCall, FailureKind, ProviderSettings
from portway.providers.huggingface import HuggingFaceProvider
from portway.providers.openai_compat import OpenAICompatProvider

GOLDEN = Path(__file__).parent / "golden"
PAYLOAD: dict[str, Any] = {
    "model": "fast",
    "models": ["smart"],
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "temperature": 0.3,
    "max_tokens": 64,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "seed": 7,
    "user": "u-1",
}

ADAPTERS = {
    "openai": lambda: OpenAICompatProvider(
        ProviderSettings(
            "groq",
            "openai",
            "https://api.groq.com/openai/v1",
            headers={"X-Title": "portway"},
            stream_usage=True,
        ),
        Transport(),
    ),
    "huggingface": lambda: HuggingFaceProvider(
        ProviderSettings("hf", "huggingface", "https://router.huggingface.co/v1"), Transport()
    ),
}


def _headers(raw: dict[str, str]) -> Headers:
    """Headers as the client's connection fills them: names lower-cased on arrival."""
    headers = Headers()
    for name, value in raw.items():
        headers[name.lower()] = value
    return headers


def _check(name: str, actual: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing golden file {path.name}: run with PORTWAY_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(path.read_text())


def _wire(adapter: OpenAICompatProvider, stream: bool, payload: dict[str, Any]) -> dict[str, Any]:
    req, injected = adapter.build_chat_request(
        ChatCall(payload, "llama-3.1-8b-instant", stream, "sk-upstream", 10)
    )
    return {
        "method": req.method,
        "url": req.url,
        "headers": req.headers,
        "body": json.loads(req.body),
        "usage_injected": injected,
    }


@pytest.mark.parametrize("name", sorted(ADAPTERS))
@pytest.mark.parametrize("stream", [False, True])
def test_chat_request(name: str, stream: bool) -> None:
    _check(f"{name}_chat_{'stream' if stream else 'plain'}_request", _wire(ADAPTERS[name](), stream, PAYLOAD))


def test_stream_usage_not_injected_when_client_asked() -> None:
    wire = _wire(ADAPTERS["openai"](), True, {**PAYLOAD, "stream_options": {"include_usage": True}})
    assert wire["usage_injected"] is False and wire["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_chat_response_parse(name: str) -> None:
    body = (GOLDEN / "chat_response.json").read_bytes()
    result = ADAPTERS[name]().parse_chat_response(body, "asked-model")
    assert result.body == body  # handed to the client byte for byte
    assert result.served_model == "llama-3.1-8b-instant"
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        12,
        5,
    )


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (
            401,
            {},
            b'{"error":{"message":"Incorrect API key provided: sk-upstream","code":"invalid_api_key"}}',
            "auth",
            None,
        ),
        (403, {}, b"{}", "forbidden", None),
        (429, {"Retry-After": "7"}, b"{}", "rate_limit", 7.0),
        (429, {}, b"{}", "rate_limit", None),
        (500, {}, b"oops", "server", None),
        (503, {}, b"{}", "server", None),
        (
            400,
            {},
            b'{"error":{"message":"bad sk-upstream param","code":"bad_param","param":"temperature"}}',
            "bad_request",
            None,
        ),
        (422, {}, b'{"error":"Input validation error"}', "bad_request", None),
    ],
)
def test_error_classification(
    status: int, headers: dict[str, str], body: bytes, kind: str, retry_after: float | None
) -> None:
    failure = ADAPTERS["openai"]().classify_error(status, _headers(headers), body, "sk-upstream")
    assert failure.kind is FailureKind(kind) and failure.retry_after == retry_after
    assert "sk-upstream" not in failure.message  # never relay a key the upstream echoed


def test_hf_string_error_message_is_kept() -> None:
    failure = ADAPTERS["huggingface"]().classify_error(422, Headers(), b'{"error":"Input too long"}', "k")
    assert failure.message == "Input too long"


KEY = "sk-upstream-0123456789abcdefXYZ"


@pytest.mark.parametrize(
    "err",
    [
        {"message": "bad request", "code": KEY, "param": KEY},
        {"message": f"key {KEY} rejected", "code": f"c-{KEY}", "param": f"messages[{KEY}]"},
        {"message": f"key ...{KEY[6:20]}... rejected", "code": KEY[3:15], "param": KEY[-10:]},  # parts of it
        {"message": f"Bearer {KEY}", "code": 400, "param": {"k": KEY}},  # not strings: dropped
    ],
)
def test_bad_request_relays_no_field_with_the_key(err: dict[str, Any]) -> None:
    body = json.dumps({"error": err}).encode()
    failure = ADAPTERS["openai"]().classify_error(400, Headers(), body, KEY)
    relayed = [failure.message, failure.error_code, failure.param]
    for value in relayed:
        assert value is None or isinstance(value, str)
        for i in range(len(KEY) - 7):  # no 8 characters of the key in a row, anywhere
            assert KEY[i : i + 8] not in (value or "")
    assert failure.message == "bad request" or "***" in failure.message


def test_bad_request_fields_without_the_key_are_relayed_as_sent() -> None:
    body = b'{"error":{"message":"temperature must be <= 2","code":"bad_param","param":"temperature"}}'
    failure = ADAPTERS["openai"]().classify_error(422, Headers(), body, KEY)
    assert (failure.message, failure.error_code, failure.param) == (
        "temperature must be <= 2",
        "bad_param",
        "temperature",
    )
