"""Early, cheap validation of a chat request body: clear 400s naming the field, everything else passed on.

Only fields the gateway itself relies on are checked, plus the common numeric ones so a client learns of a
typo from us rather than from an upstream; unknown fields go to the upstream untouched (new OpenAI params).
"""

from __future__ import annotations

from typing import Any

import orjson

from portway.errors import ValidationError

_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")
_NUM_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_BOOL_FIELDS = ("stream", "logprobs", "parallel_tool_calls")
_OBJ_FIELDS = ("stream_options", "response_format", "logit_bias", "metadata")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ValidationError("Request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"Request body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise ValidationError("Request body must be a JSON object")
    return body


def _type_error(field: str, expected: str) -> ValidationError:
    return ValidationError(f"'{field}' must be {expected}", param=field)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", "a non-empty array of message objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _type_error(f"messages[{i}]", "an object")
        if not isinstance(msg.get("role"), str):
            raise _type_error(f"messages[{i}].role", "a string")


def _check_model(body: dict[str, Any]) -> None:
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise _type_error("models", "an array of model names")
    model = body.get("model")
    if model is None and models:
        body["model"] = models[0]  # OpenRouter allows `models` alone: the first is the primary
        body["models"] = models[1:]
    elif not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string")


def validate_chat(body: dict[str, Any]) -> dict[str, Any]:
    _check_model(body)
    _check_messages(body.get("messages"))
    for f in _INT_FIELDS:
        v = body.get(f)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise _type_error(f, "an integer")
    for f in ("max_tokens", "max_completion_tokens", "n"):
        v = body.get(f)
        if v is not None and v < 1:
            raise ValidationError(f"'{f}' must be at least 1", param=f)
    for f in _NUM_FIELDS:
        v = body.get(f)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _type_error(f, "a number")
    for f in _BOOL_FIELDS:
        if f in body and not isinstance(body[f], bool) and body[f] is not None:
            raise _type_error(f, "a boolean")
    for f in _OBJ_FIELDS:
        if body.get(f) is not None and not isinstance(body[f], dict):
            raise _type_error(f, "an object")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _type_error("stop", "a string or an array of strings")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise _type_error("tools", "an array")
    return body
