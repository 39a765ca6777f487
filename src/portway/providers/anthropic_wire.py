"""The Messages API <-> chat completions, for `type: anthropic` (providers/anthropic.py): pure, no I/O.

`build_messages_body` turns a chat completions payload into a Messages request, `chat_completion` turns a
Message back into a chat.completion, and `ChunkTranslator` turns Anthropic's stream events (message_start,
content_block_start / _delta / _stop, message_delta, message_stop, ping, error) into chat.completion.chunk
events ending in `data: [DONE]`; `PassthroughRelay` passes them on as they are, noting usage.

- `system` / `developer` messages become `system`; `tool` messages become `tool_result` blocks of a user turn;
  an assistant's `tool_calls` become `tool_use` blocks; turns of the same role are merged (Anthropic wants
  them alternating, with every tool result of a turn in the one user message that follows it). Images:
  data: URLs as base64 sources, http(s) URLs as url sources; PDF file parts as documents.
- `response_format` json_schema / json_object: by default a tool whose `input_schema` is the schema (forced
  when the client sent no tools; works on every Claude model), its input answered back as the message's
  content with finish_reason `stop`; `options.json_schema: native` sends `output_config.format` instead.
- Usage: Anthropic's `input_tokens` excludes cached tokens, so prompt_tokens = input + cache writes + cache
  reads, `prompt_tokens_details.cached_tokens` = cache reads; thinking tokens are reasoning tokens.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import Field

from portway.providers.base import Completion, FailureKind, ProviderOptions, UpstreamFailure, Usage
from portway.providers.sse import DONE_EVENT, encode_event, event_data

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
JSON_TOOL = "json_response"  # the forced tool's name when the schema has none (or it names a client tool)

# Anthropic stop_reason -> chat completions finish_reason (None: the stream or the answer had none).
STOP_REASONS: dict[str | None, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    None: "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Only the fields below are sent: the Messages API refuses unknown ones, and OpenAI's that only tune
# sampling (penalties, seed, logit_bias) or steer OpenAI's service (store, service_tier) have no equivalent.
_EXTRAS = ("top_k", "thinking")  # Anthropic's own knobs, sent by clients through extra_body


class AnthropicOptions(ProviderOptions):
    anthropic_version: str = Field(API_VERSION, min_length=1, description="the anthropic-version header")
    max_tokens: int = Field(
        4096, ge=1, description="max_tokens sent when the client sets none (the Messages API requires it)"
    )
    json_schema: Literal["tool", "native"] = Field(
        "tool",
        description="response_format json_schema as a forced tool (any model) or output_config (newer ones)",
    )


def _refuse(message: str, param: str | None = None) -> UpstreamFailure:
    """What a Messages request cannot express: refused (as the local model refuses it), not dropped."""
    return UpstreamFailure(
        FailureKind.BAD_REQUEST, message, status=400, error_code="unsupported_parameter", param=param
    )


# -- request: chat completions -> Messages -----------------------------------------------------------------


def build_messages_body(
    payload: dict[str, Any], model: str, stream: bool, opts: AnthropicOptions
) -> tuple[dict[str, Any], str | None]:
    """The Messages API body, and the name of the tool that carries a JSON answer (None: no such tool)."""
    if (payload.get("n") or 1) != 1:
        raise _refuse("anthropic upstreams answer one choice: n must be 1", "n")
    if payload.get("logprobs") or payload.get("top_logprobs"):
        raise _refuse("anthropic upstreams give no logprobs", "logprobs")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise _refuse("messages must be a list", "messages")
    system, turns = _turns(messages)
    max_tokens = payload.get("max_completion_tokens")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens if max_tokens is not None else payload.get("max_tokens") or opts.max_tokens,
        "messages": turns,
    }
    if system:
        only_text = len(system) == 1 and set(system[0]) == {"type", "text"}
        body["system"] = system[0]["text"] if only_text else system
    for name in ("temperature", "top_p", *_EXTRAS):
        if payload.get(name) is not None:
            body[name] = payload[name]
    stop = payload.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(payload.get("user"), str):
        body["metadata"] = {"user_id": payload["user"]}
    if stream:
        body["stream"] = True
    json_tool = _tools(payload, body, opts)
    return body, json_tool


def _turns(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _refuse("each message must be an object", f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system += [b for b in _blocks(msg.get("content"), f"messages[{i}]") if b.get("text")]
        elif role == "user":
            _append(turns, "user", _user_content(msg.get("content"), f"messages[{i}]"))
        elif role == "assistant":
            content = _assistant_content(msg, i)
            if content:  # an empty assistant turn (no text, no calls) is refused by Anthropic: left out
                _append(turns, "assistant", content)
        elif role == "tool":
            _append(turns, "user", [_tool_result(msg, i)])
        else:
            raise _refuse(f"anthropic upstreams take no {role!r} messages", f"messages[{i}].role")
    return system, turns


def _append(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Add a turn, merging it into the previous one of the same role."""
    if turns and turns[-1]["role"] == role:
        last = turns[-1]
        last["content"] = _as_blocks(last["content"]) + _as_blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else _blocks(content, where)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content parts -> Anthropic content blocks (text, image, PDF document)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise _refuse("content must be a string or a list of parts", f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            blocks.append({"type": "image", "source": _source(url, f"{where}.content[{j}]")})
        elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
            source = _source(part["file"]["file_data"], f"{where}.content[{j}]")
            blocks.append({"type": "document", "source": source})
        elif kind == "refusal":
            continue  # an assistant's earlier refusal: nothing the model needs to read back
        else:
            raise _refuse(f"anthropic upstreams take no {kind!r} content parts", f"{where}.content[{j}]")
    return blocks


def _source(url: Any, where: str) -> dict[str, Any]:
    """A data: URL -> a base64 source; an http(s) URL -> a url source (Anthropic fetches it)."""
    if not isinstance(url, str):
        raise _refuse("an image or file part needs a URL", where)
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise _refuse("a data URL must be data:<media type>;base64,<data>", where)
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise _refuse("an image URL must be https:// or data:", where)


def _assistant_content(msg: dict[str, Any], i: int) -> str | list[dict[str, Any]]:
    content = msg.get("content")
    calls = msg.get("tool_calls") or []
    if isinstance(content, str) and not calls:
        return content
    blocks = [b for b in _blocks(content, f"messages[{i}]") if b.get("type") != "text" or b["text"]]
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _refuse("a tool call needs a function with a name", where)
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise _refuse("tool call arguments must be a JSON object", f"{where}.function.arguments")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn["name"], "input": args})
    return blocks


def _tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    content = msg.get("content")
    result = content if isinstance(content, str) else _blocks(content, f"messages[{i}]")
    return {"type": "tool_result", "tool_use_id": msg.get("tool_call_id"), "content": result}


def _tools(payload: dict[str, Any], body: dict[str, Any], opts: AnthropicOptions) -> str | None:
    """Fill `tools`, `tool_choice` and the JSON answer's form; the JSON answer's tool name, if one."""
    tools = []
    for j, tool in enumerate(payload.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _refuse("anthropic upstreams take function tools only", f"tools[{j}]")
        entry: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            entry["description"] = fn["description"]
        entry["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        tools.append(entry)
    choice = _tool_choice(payload.get("tool_choice")) if tools else None
    json_tool = _json_answer(payload.get("response_format"), tools, body, opts)
    if json_tool is not None and len(tools) == 1:
        choice = {"type": "tool", "name": json_tool}  # no tool of the client's: the JSON answer is forced
    if payload.get("parallel_tool_calls") is False and tools and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    return json_tool


def _json_answer(
    fmt: Any, tools: list[dict[str, Any]], body: dict[str, Any], opts: AnthropicOptions
) -> str | None:
    """response_format json_schema / json_object: `output_config` (native), or a tool appended to `tools`
    whose input is the answer (its name returned). With tools of the client's as well, the model chooses."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("json_schema", "json_object"):
        return None
    spec = fmt.get("json_schema") if kind == "json_schema" else {}
    if not isinstance(spec, dict) or (kind == "json_schema" and not isinstance(spec.get("schema"), dict)):
        raise _refuse("response_format json_schema needs a schema", "response_format.json_schema")
    if kind == "json_schema" and opts.json_schema == "native":
        body["output_config"] = {"format": {"type": "json_schema", "schema": spec["schema"]}}
        return None
    taken = {t["name"] for t in tools}
    wanted = spec.get("name") if isinstance(spec.get("name"), str) else JSON_TOOL
    name = next((n for n in (wanted, JSON_TOOL) if n not in taken), f"portway_{JSON_TOOL}_{len(tools)}")
    description = spec.get("description") or "Give the answer as this tool's input."
    tools.append(
        {"name": name, "description": description, "input_schema": spec.get("schema") or {"type": "object"}}
    )
    return name


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"type": "tool", "name": fn["name"]}
    raise _refuse("tool_choice must be auto, none, required or a named function", "tool_choice")


# -- response: Messages -> chat completions ----------------------------------------------------------------


def usage_of(raw: Any) -> tuple[Usage, dict[str, Any]] | None:
    """Anthropic usage -> (portway's Usage, OpenAI's usage object); None when it is not there."""
    if not isinstance(raw, dict) or not isinstance(raw.get("output_tokens"), int):
        return None
    read = raw.get("cache_read_input_tokens") or 0
    prompt = (raw.get("input_tokens") or 0) + (raw.get("cache_creation_input_tokens") or 0) + read
    details = raw.get("output_tokens_details")
    thinking = (details.get("thinking_tokens") if isinstance(details, dict) else None) or 0
    completion = raw["output_tokens"]
    return Usage(prompt, completion, read, thinking), {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
        "completion_tokens_details": {"reasoning_tokens": thinking},
    }


def chat_completion(msg: dict[str, Any], json_tool: str | None, created: int) -> dict[str, Any]:
    """An Anthropic Message -> a chat.completion object."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use" and block.get("name") == json_tool:
            texts.append(orjson.dumps(block.get("input")).decode())
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            fn = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": fn})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    message["refusal"] = None
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(msg, calls)}
    out = {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model"),
        "choices": [choice],
    }
    usage = usage_of(msg.get("usage"))
    if usage is not None:
        out["usage"] = usage[1]
    return out


def _finish(msg: dict[str, Any], calls: list[Any]) -> str:
    reason = msg.get("stop_reason")
    if reason == "tool_use" and not calls:  # only the JSON answer's tool was used: a plain answer
        return "stop"
    return STOP_REASONS.get(reason, "stop")


def _message(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent a body that is not JSON") from None
    if not isinstance(obj, dict) or obj.get("type") != "message" or not isinstance(obj.get("content"), list):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent JSON that is not a message")
    return obj


def parse_response(body: bytes, model: str, json_tool: str | None, created: int | None = None) -> Completion:
    msg = _message(body)
    out = chat_completion(msg, json_tool, int(time.time()) if created is None else created)
    usage = usage_of(msg.get("usage"))
    served = msg.get("model")
    return Completion(
        orjson.dumps(out), usage[0] if usage else None, served if isinstance(served, str) else model
    )


def parse_passthrough(body: bytes, model: str) -> Completion:
    """The upstream's Message as it came (a /v1/messages client reads Anthropic's own bytes)."""
    msg = _message(body)
    usage = usage_of(msg.get("usage"))
    served = msg.get("model")
    return Completion(body, usage[0] if usage else None, served if isinstance(served, str) else model)


def error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, error type, None) from Anthropic's {"type": "error", "error": {"type", "message"}}."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return None, None, None
    msg, kind = (f if isinstance(f, str) and f else None for f in (err.get("message"), err.get("type")))
    return msg, kind, None


# -- streams -----------------------------------------------------------------------------------------------


def _event(event: bytes) -> dict[str, Any] | None:
    """One Anthropic SSE event's JSON (its `type` names it); None for a comment or keep-alive."""
    data = event_data(event)
    if not data:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent an event that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent an event that is not an object")
    return obj


def _field(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """obj[name] when it is an object, else an empty one (a malformed event reads as one without it)."""
    value = obj.get(name)
    return value if isinstance(value, dict) else {}


# An `error` event's type -> its kind: an overloaded or API error may pass elsewhere (a fallback, if it came
# before the first byte); anything else is an answer that went wrong.
_ERROR_EVENTS = {
    "overloaded_error": FailureKind.SERVER,
    "api_error": FailureKind.SERVER,
    "timeout_error": FailureKind.SERVER,
    "rate_limit_error": FailureKind.RATE_LIMIT,
}


def _stream_error(obj: dict[str, Any]) -> UpstreamFailure:
    kind = _field(obj, "error").get("type")
    label = kind[:100] if isinstance(kind, str) and kind else "error"
    return UpstreamFailure(
        _ERROR_EVENTS.get(label, FailureKind.BAD_RESPONSE), f"upstream sent an error event ({label})"
    )


class _Totals:
    """Usage as a stream reports it: input counts at message_start, cumulative counts at message_delta."""

    def __init__(self, model: str) -> None:
        self.raw: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.served_model = model
        self.done = False

    def note(self, obj: dict[str, Any]) -> str | None:
        """Take one event's usage and model; its type (raises on an error event)."""
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            msg = obj["message"]
            if isinstance(msg.get("model"), str):
                self.served_model = msg["model"]
            self.raw.update(msg.get("usage") or {})
        elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
            self.raw.update({k: v for k, v in obj["usage"].items() if v is not None})
            usage = usage_of(self.raw)
            self.usage = usage[0] if usage else self.usage
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise _stream_error(obj)
        return kind if isinstance(kind, str) else None


class PassthroughRelay(_Totals):
    """Anthropic's events as they came, for a /v1/messages client; usage noted on the way."""

    def feed(self, event: bytes) -> list[bytes]:
        obj = _event(event)
        if obj is not None:
            self.note(obj)
        return [event]


class ChunkTranslator(_Totals):
    """Anthropic stream events -> chat.completion.chunk events (and `data: [DONE]` after message_stop)."""

    def __init__(self, model: str, json_tool: str | None, include_usage: bool, created: int) -> None:
        super().__init__(model)
        self._json_tool = json_tool
        self._include_usage = include_usage
        self._base: dict[str, Any] = {
            "id": None,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._calls: dict[int, int | None] = {}  # content block index -> tool call index (None: JSON answer)

    def feed(self, event: bytes) -> list[bytes]:
        obj = _event(event)
        if obj is None:
            return []
        kind = self.note(obj)
        if kind == "message_start":
            self._base["id"] = _field(obj, "message").get("id")
            self._base["model"] = self.served_model
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "message_delta":
            delta = _field(obj, "delta")
            reason = delta.get("stop_reason")
            if reason == "tool_use" and not any(v is not None for v in self._calls.values()):
                reason = "end_turn"  # only the JSON answer's tool was used
            return [self._chunk({}, STOP_REASONS.get(reason, "stop"))]
        if kind == "message_stop":
            out = []
            usage = usage_of(self.raw)
            if self._include_usage and usage is not None:
                out.append(encode_event({**self._base, "choices": [], "usage": usage[1]}))
            return [*out, DONE_EVENT]
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, obj: dict[str, Any]) -> list[bytes]:
        block = _field(obj, "content_block")
        index = obj.get("index")
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use" or not isinstance(index, int):
            return []
        if block.get("name") == self._json_tool:
            self._calls[index] = None
            return []
        n = self._calls[index] = sum(1 for v in self._calls.values() if v is not None)
        fn = {"name": block.get("name"), "arguments": ""}
        return [
            self._chunk(
                {"tool_calls": [{"index": n, "id": block.get("id"), "type": "function", "function": fn}]}
            )
        ]

    def _delta(self, obj: dict[str, Any]) -> list[bytes]:
        delta = _field(obj, "delta")
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind != "input_json_delta" or not delta.get("partial_json"):
            return []  # signature and citation deltas have no chat completions form
        index = obj.get("index")
        if index not in self._calls:
            return []
        n = self._calls[index]
        if n is None:  # the JSON answer: its input is the message's content
            return [self._chunk({"content": delta["partial_json"]})]
        return [self._chunk({"tool_calls": [{"index": n, "function": {"arguments": delta["partial_json"]}}]})]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return encode_event({**self._base, "choices": [choice]})
