"""Turning an OpenAI chat request body into llama-cpp-python's create_chat_completion() arguments.

Tools and structured output are read into an `OutputPlan` (structured.py) that the worker turns into a
grammar; the conversation is rendered as plain text turns the GGUF's chat template can format: an
assistant's tool calls become `call: {...}` lines, as the model writes them, and a tool's result a user
turn naming the function (chat templates differ in whether, and how, they know a `tool` role).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local.structured import CALL_LABEL, OutputPlan, instructions, read_plan

_FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


@dataclass(slots=True)
class GenerationRequest:
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]  # keyword arguments for Llama.create_chat_completion (besides messages/stream)
    include_usage: bool = False  # stream: send a final usage chunk (stream_options.include_usage)
    plan: OutputPlan | None = None  # tools / JSON output, enforced by a grammar; None: free text
    top_logprobs: int | None = None  # logprobs were asked for, with this many alternatives per token

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
    if payload.get("functions"):
        _unsupported("functions", "the deprecated functions (use tools)")
    if payload.get("function_call") not in (None, "none", "auto"):
        _unsupported("function_call", "the deprecated function_call (use tools and tool_choice)")
    if payload.get("logit_bias"):  # keyed by OpenAI's token ids, which mean nothing to another tokenizer
        _unsupported("logit_bias", "logit_bias")


def _top_logprobs(payload: dict[str, Any], enabled: bool, plan: OutputPlan | None) -> int | None:
    """How many alternatives per token when `logprobs` is true (llama.cpp gives them only for a model
    loaded with logits for every token: the provider option `logprobs: true`)."""
    requested, top = payload.get("logprobs"), payload.get("top_logprobs")
    if requested is not None and not isinstance(requested, bool):
        _bad("logprobs must be a boolean", "logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            _bad(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
        if not requested:
            _bad("top_logprobs needs logprobs: true", "top_logprobs")
    if not requested:
        return None
    if not enabled:
        _unsupported("logprobs", "logprobs unless its provider sets options.logprobs: true")
    if plan is not None and plan.tools:
        _unsupported("logprobs", "logprobs together with tools")
    return top or 0


def build_request(
    payload: dict[str, Any], max_tokens_cap: int, *, logprobs: bool = False
) -> GenerationRequest:
    """Validates what the local model needs and refuses what it cannot honour (`logprobs`: whether the
    model was loaded able to give them)."""
    _refuse_unhonoured(payload)
    plan = read_plan(payload)
    top_logprobs = _top_logprobs(payload, logprobs, plan)
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
    if stop and plan is not None:
        _unsupported("stop", "stop with tools or a JSON response_format (it would cut the JSON)")
    if stop:
        sampling["stop"] = stop
    if top_logprobs is not None:
        sampling["logprobs"], sampling["top_logprobs"] = True, top_logprobs
    n = payload.get("n")
    if n is not None and n != 1:
        _bad("the local model returns one choice: n must be 1", "n")
    stream_options = payload.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    messages = _messages(payload.get("messages"))
    if plan is not None:
        messages = _with_system(messages, instructions(plan))
    return GenerationRequest(messages, sampling, include_usage, plan, top_logprobs)


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
    called: dict[str, str] = {}  # tool_call_id -> function name, from the assistant turns so far
    results = 0  # how many tool results the last user turn holds (consecutive ones share one turn)
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            _bad("each message needs a string role", f"messages[{index}]")
        role: str = message["role"]
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        text = _text(message.get("content"), index)
        if role in ("tool", "function"):
            text = _tool_result(message, text, called)
            if results:
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": "user", "content": text})
            results += 1
            continue
        results = 0
        if role == "assistant" and message.get("tool_calls"):
            text = _with_calls(text, message["tool_calls"], called, index)
        messages.append({"role": role, "content": text})
    return messages


def _with_calls(text: str, calls: Any, called: dict[str, str], index: int) -> str:
    """An assistant turn's tool calls as the model writes them on `auto` (one per line): shown bare, a
    tiny model copies the JSON as its next answer instead of using the result."""
    if not isinstance(calls, list):
        _bad("tool_calls must be an array", f"messages[{index}].tool_calls")
    lines = [text] if text else []
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            _bad("a tool call needs a function name", f"messages[{index}].tool_calls[{position}]")
        name: str = function["name"]
        arguments = function.get("arguments")
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            parsed = arguments  # the model may have written broken JSON: shown as it was
        call_object = orjson.dumps({"name": name, "arguments": parsed if parsed is not None else {}})
        lines.append(CALL_LABEL + call_object.decode())
        if isinstance(call.get("id"), str):
            called[call["id"]] = name
    return "\n".join(lines)


def _tool_result(message: dict[str, Any], text: str, called: dict[str, str]) -> str:
    """A tool (or legacy function) result as text naming the function it answers."""
    name = message.get("name") or called.get(message.get("tool_call_id") or "") or "the function"
    return f"Function {name} returned: {text}"


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`text` appended to the system turn (one is put first if there is none)."""
    if messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{text}".lstrip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


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
