"""Turning an OpenAI chat request body into llama-cpp-python's create_chat_completion() arguments."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, NoReturn

from portway.providers.base import FailureKind, UpstreamFailure

_FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


@dataclass(slots=True)
class GenerationRequest:
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]  # keyword arguments for Llama.create_chat_completion (besides messages/stream)
    include_usage: bool = False  # stream: send a final usage chunk (stream_options.include_usage)

    @property
    def max_tokens(self) -> int:
        value: int = self.sampling["max_tokens"]
        return value


def _bad(message: str, param: str) -> NoReturn:
    raise UpstreamFailure(
        FailureKind.BAD_REQUEST, message, status=400, error_code="validation_error", param=param
    )


def _unsupported(param: str, what: str) -> NoReturn:
    raise UpstreamFailure(
        FailureKind.BAD_REQUEST,
        f"the local model does not support {what}",
        status=400,
        error_code="unsupported_parameter",
        param=param,
    )


def _refuse_unhonoured(payload: dict[str, Any]) -> None:
    """A 400 naming a parameter that would change the answer but that the local model cannot honour:
    ignoring it would answer a different question than the one asked. (`user`, `metadata`, `store`...
    do not change the answer and are ignored.)"""
    for name in ("tools", "functions"):
        if payload.get(name):
            _unsupported(name, f"{name} (function calling)")
    for name in ("tool_choice", "function_call"):
        if payload.get(name) not in (None, "none", "auto"):  # without tools both mean "just answer"
            _unsupported(name, f"{name} other than 'none' or 'auto'")
    if payload.get("logprobs"):
        _unsupported("logprobs", "logprobs")
    if payload.get("top_logprobs") is not None:
        _unsupported("top_logprobs", "top_logprobs")
    if payload.get("logit_bias"):
        _unsupported("logit_bias", "logit_bias")


def _response_format(raw: Any) -> dict[str, Any] | None:
    """`text` and schema-less `json_object` (a JSON grammar) are honoured; a JSON schema is not yet."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object" and set(raw) == {"type"}:
        return {"type": "json_object"}
    if kind in ("json_object", "json_schema"):
        _unsupported("response_format", "a response_format with a JSON schema")
    _unsupported("response_format", f"response_format type {kind!r}")


def build_request(payload: dict[str, Any], max_tokens_cap: int) -> GenerationRequest:
    """Validates what the local model needs and refuses what it cannot honour."""
    _refuse_unhonoured(payload)
    sampling: dict[str, Any] = {"max_tokens": _max_tokens(payload, max_tokens_cap)}
    for name in _FLOAT_PARAMS:
        value = payload.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                _bad(f"{name} must be a number", name)
            sampling[name] = float(value)
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        _bad("seed must be an integer", "seed")
    # Without a seed llama-cpp-python reuses one fixed seed: draw one so sampling varies like OpenAI's.
    sampling["seed"] = seed % 2**32 if seed is not None else secrets.randbits(32)
    stop = _stop(payload.get("stop"))
    if stop:
        sampling["stop"] = stop
    response_format = _response_format(payload.get("response_format"))
    if response_format is not None:
        sampling["response_format"] = response_format
    n = payload.get("n")
    if n is not None and n != 1:
        _bad("the local model returns one choice: n must be 1", "n")
    stream_options = payload.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return GenerationRequest(_messages(payload.get("messages")), sampling, include_usage)


def _max_tokens(payload: dict[str, Any], cap: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _bad(f"{name} must be a positive integer", name)
        return min(value, cap)
    return cap


def _stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return [item for item in raw if item]
    _bad("stop must be a string or an array of strings", "stop")


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        _bad("messages must be a non-empty array", "messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            _bad("each message needs a string role", f"messages[{index}]")
        role: str = message["role"]
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        messages.append({"role": role, "content": _text(message.get("content"), index)})
    return messages


def _text(content: Any, index: int) -> str:
    """Message content as plain text: strings, None (assistant tool calls) and text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") == "refusal":
                texts.append(str(part.get("refusal") or ""))
            else:
                _bad("the local model accepts text content only", f"messages[{index}].content")
        return "".join(texts)
    _bad("message content must be a string or an array of content parts", f"messages[{index}].content")
