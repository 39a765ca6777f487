"""Anthropic's Messages API as chat completions, and back. Pure: no I/O.

Request (`chat_request`): `system` → the first system message (text blocks joined by a blank line); text
and image blocks (base64 → a `data:` URL) → content parts; an assistant's tool_use blocks → `tool_calls`; a
user's tool_result blocks → `tool` messages before the rest of that turn (is_error prefixes "Error: ";
images in a result follow as a user message: chat's tool messages hold text only); custom tools → function
tools; tool_choice auto / any / tool / none → auto / required / named / none; stop_sequences → stop,
metadata.user_id → user, output_config.format → response_format. Dropped, as no other model can use them:
top_k, thinking, cache_control, thinking blocks, Anthropic's server tools. Other blocks are refused (400).

Answer (`message`, `MessagesStream`): text, tool_use (arguments parsed; streamed as input_json_delta pieces
exactly as the upstream sent them) and thinking (from `reasoning_content`) blocks; finish_reason → stop_reason
(stop_sequence when the upstream names the matched string, as vLLM does); input_tokens exclude cached prompt
tokens (cache_read_input_tokens), as Anthropic counts. A stream's usage arrives at its end: message_start
carries zeros, message_delta the totals (the SDKs take input and output tokens from it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from portway.errors import ValidationError
from portway.providers.sse import event_data

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
_STOP["content_filter"] = "refusal"
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors); others by class.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error"}
_ERROR_TYPES |= {403: "permission_error", 404: "not_found_error", 413: "request_too_large"}
_ERROR_TYPES |= {429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error"}
_ERROR_TYPES[529] = "overloaded_error"


def _bad(param: str, message: str) -> ValidationError:
    return ValidationError(f"{param}: {message}", param=param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _obj(v: Any) -> dict[str, Any]:
    """`v` if it is a JSON object, else an empty one (upstream JSON is read defensively)."""
    return v if isinstance(v, dict) else {}


def _count(v: Any) -> int:
    """A token count: a non-negative integer, else 0."""
    return v if _is_int(v) and v > 0 else 0


# -- request ---------------------------------------------------------------------------------------------


def chat_request(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """The chat request that serves this Messages request (ValidationError naming the field).

    `count_only`: a count_tokens body, which has no `max_tokens`.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Field required (a non-empty string)")
    chat: dict[str, Any] = {"model": model}
    if body.get("models") is not None:
        chat["models"] = body["models"]  # portway's per-request fallbacks, as on the chat route
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count_only:
        raise _bad("max_tokens", "Field required")
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _bad("max_tokens", "must be an integer of at least 1")
        chat["max_tokens"] = max_tokens
    chat["messages"] = _system(body.get("system")) + _messages(body.get("messages"))
    _sampling(body, chat)
    _tools(body, chat)
    _output_format(body.get("output_config"), chat)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        texts = [_text_of(b, f"system.{i}") for i, b in enumerate(system)]
        return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []
    raise _bad("system", "must be a string or an array of text blocks")


def _text_of(block: Any, path: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise _bad(path, "must be a text block")
    text: str = block["text"]
    return text


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty array of messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages.{i}", "must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role == "user":
            out += _user(content, f"messages.{i}.content")
        elif role == "assistant":
            out.append(_assistant(content, f"messages.{i}.content"))
        else:
            raise _bad(f"messages.{i}.role", "must be 'user' or 'assistant'")
    return out


def _blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise _bad(path, "must be a string or an array of content blocks")
    return content


def _parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content: one text part alone is sent as a plain string (what every upstream accepts)."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _user(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # held by tool results: they follow the results, before the turn
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, path)):
        kind, where = block.get("type"), f"{path}.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, where)})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_result":
            message, held = _tool_result(block, where)
            tools.append(message)
            images += held
        elif kind not in _SKIPPED_BLOCKS:
            raise _bad(f"{where}.type", f"content blocks of type {kind!r} are not supported here")
    parts = images + parts
    if parts or not tools:
        tools.append({"role": "user", "content": _parts(parts) if parts else ""})
    return tools


def _image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{path}.source", "a base64 source needs media_type and data strings")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{path}.source", "must be a base64 or url image source")


def _tool_result(block: dict[str, Any], path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A `tool` message with the result's text, and the images it held (chat's tool messages have none)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{path}.tool_use_id", "Field required (a string)")
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        texts: list[str] = []
        for k, part in enumerate(_blocks(content, f"{path}.content")):
            if part.get("type") == "image":
                images.append(_image(part, f"{path}.content.{k}"))
            else:
                texts.append(_text_of(part, f"{path}.content.{k}"))
        text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _assistant(content: Any, path: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, path)):
        kind, where = block.get("type"), f"{path}.{j}"
        if kind == "text":
            texts.append(_text_of(block, where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind not in _SKIPPED_BLOCKS:
            raise _bad(f"{where}.type", f"content blocks of type {kind!r} are not supported here")
    # Text blocks of one turn are pieces of one answer (split around its tool calls): joined as they are.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any], path: str) -> dict[str, Any]:
    call_id, name, args = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _bad(path, "a tool_use block needs id and name strings")
    if not isinstance(args, dict):
        raise _bad(f"{path}.input", "must be an object")
    arguments = orjson.dumps(args).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _sampling(body: dict[str, Any], chat: dict[str, Any]) -> None:
    for field in ("temperature", "top_p"):
        value = body.get(field)
        if value is not None:
            if not _is_number(value):
                raise _bad(field, "must be a number")
            chat[field] = value
    if body.get("top_k") is not None and not _is_int(body["top_k"]):
        raise _bad("top_k", "must be an integer")  # checked, then dropped: chat has no top_k
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences", "must be an array of strings")
        if stop:
            chat["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools", "must be an array")
    functions = [_function(t, f"tools.{i}") for i, t in enumerate(tools)]
    functions = [f for f in functions if f is not None]
    if not functions:
        return
    chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice", "must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name'}")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _function(tool: Any, path: str) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        raise _bad(path, "must be an object")
    if tool.get("type") not in (None, "custom"):
        return None  # an Anthropic server tool (web_search_…, bash_…): nothing another model can run
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise _bad(f"{path}.name", "Field required (a string)")
    if not isinstance(schema, dict):
        raise _bad(f"{path}.input_schema", "Field required (a JSON schema object)")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = schema
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _output_format(config: Any, chat: dict[str, Any]) -> None:
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt is None:
        return
    schema = fmt.get("schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        raise _bad("output_config.format", "must be {'type': 'json_schema', 'schema': {...}}")
    # chat's json_schema needs a name; Anthropic's has none.
    chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


# -- response --------------------------------------------------------------------------------------------


def message_id(upstream_id: Any, fallback: str) -> str:
    """Anthropic's `msg_…` id, from the upstream's completion id (so logs on both sides match)."""
    if isinstance(upstream_id, str) and upstream_id:
        return "msg_" + upstream_id.removeprefix("chatcmpl-")
    return "msg_" + fallback


def usage(raw: Any) -> dict[str, Any]:
    """Anthropic's usage from chat's: cached prompt tokens are cache reads, not counted in input_tokens."""
    raw = _obj(raw)
    prompt = _count(raw.get("prompt_tokens"))
    cached = min(_count(_obj(raw.get("prompt_tokens_details")).get("cached_tokens")), prompt)
    out: dict[str, Any] = {
        "input_tokens": prompt - cached,
        "output_tokens": _count(raw.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }
    reasoning = _count(_obj(raw.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning:
        out["output_tokens_details"] = {"thinking_tokens": reasoning}
    return out


def stop_reason(
    finish: Any, tool_calls: bool, matched: Any, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). `matched`: the stop string an upstream names (vLLM's `stop_reason`)."""
    if finish == "length":
        return "max_tokens", None
    if tool_calls:  # some upstreams end a tool call with "stop": the blocks say what it was
        return "tool_use", None
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def _reasoning(obj: dict[str, Any]) -> str | None:
    for field in ("reasoning_content", "reasoning"):
        value = obj.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some upstreams answer with text parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as tool_use input: an object. Arguments that are not a JSON object are kept
    (as `_raw_arguments`) rather than lost."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def _tool_use(call: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    fn = _obj(call.get("function"))
    call_id = call.get("id")
    name = fn.get("name")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else fallback_id,
        "name": name if isinstance(name, str) else "",
        "input": tool_input(fn.get("arguments")),
    }


def message(
    completion: dict[str, Any], *, model: str, fallback_id: str, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    """The Anthropic message for a chat.completion object."""
    choices = completion.get("choices")
    choice = _obj(choices[0]) if isinstance(choices, list) and choices else {}
    msg = _obj(choice.get("message"))
    msg_id = message_id(completion.get("id"), fallback_id)
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(msg)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    finish = choice.get("finish_reason")
    text = _content_text(msg.get("content"))
    refusal = msg.get("refusal")
    if not text and isinstance(refusal, str) and refusal:  # OpenAI's refusal: the text of a refusal
        text, finish = refusal, "content_filter"
    if text:
        content.append({"type": "text", "text": text})
    calls = [c for c in msg.get("tool_calls") or () if isinstance(c, dict)]
    content += [_tool_use(call, f"toolu_{msg_id[4:]}_{n}") for n, call in enumerate(calls)]
    reason, sequence = stop_reason(finish, bool(calls), choice.get("stop_reason"), stop_sequences)
    served = completion.get("model")
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": served if isinstance(served, str) and served else model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(completion.get("usage")),
    }


# -- stream ----------------------------------------------------------------------------------------------


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic event: a named SSE event whose data carries the same `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStream:
    """Chat completion chunks in, Anthropic's event sequence out; fed one SSE event at a time.

    message_start with the first chunk; one content block open at a time (a thinking, text or tool_use
    block starts when the chunks switch kind; each tool call of the upstream is its own block, its argument
    pieces passed on as input_json_delta as they come); at `[DONE]` (or `close()` when the stream just
    ended) the open block stops and message_delta (stop reason, usage) and message_stop follow. An error
    event of the chat stream (an upstream that broke mid-way) becomes Anthropic's `error` event, and
    nothing follows it. A piece of an earlier tool call that arrives after a later one has started (an
    upstream interleaving parallel calls) is still sent, at that call's block index.
    """

    def __init__(self, model: str, *, fallback_id: str, stop_sequences: Sequence[str] = ()) -> None:
        self.model = model
        self.fallback_id = fallback_id
        self.stop_sequences = stop_sequences
        self.started = False
        self.ended = False
        self.msg_id = ""
        self.blocks = 0  # content blocks started so far
        self.open: str | None = None  # the kind of the open block (its index is blocks - 1)
        self.tools: dict[int, int] = {}  # the upstream's tool-call index -> our block index
        self.finish: Any = None
        self.matched: Any = None  # vLLM's stop_reason: the stop string it matched
        self.usage: Any = None

    def feed(self, event: bytes) -> list[bytes]:
        if self.ended:
            return []
        data = event_data(event)
        if data is None:
            return []  # a comment or keep-alive
        if data == b"[DONE]":
            return self.close()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and not chunk.get("choices"):
            return self._error(chunk["error"])
        out: list[bytes] = []
        if not self.started:
            out.append(self._start(chunk))
        self._chunk(chunk, out)
        return out

    def close(self) -> list[bytes]:
        """The end of the chat stream: the tail of the message, once."""
        if self.ended:
            return []
        out = [] if self.started else [self._start({})]
        self._stop_block(out)
        self.ended = True
        reason, sequence = stop_reason(self.finish, bool(self.tools), self.matched, self.stop_sequences)
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}}
        out.append(sse("message_delta", {**delta, "usage": usage(self.usage)}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        return out

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.msg_id = message_id(chunk.get("id"), self.fallback_id)
        served = chunk.get("model")
        message: dict[str, Any] = {
            "id": self.msg_id,
            "type": "message",
            "role": "assistant",
            "model": served if isinstance(served, str) and served else self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end: see message_delta
        }
        return sse("message_start", {"type": "message_start", "message": message})

    def _error(self, err: Any) -> list[bytes]:
        self.ended = True
        return [error_event(err)]

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Anthropic has one answer (we never ask for n > 1)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                self.matched = choice.get("stop_reason")

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        reasoning = _reasoning(delta)
        if reasoning:
            self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            out.append(self._block_delta(self.blocks - 1, {"type": "thinking_delta", "thinking": reasoning}))
        text = delta.get("content")
        if isinstance(text, str) and text:
            self._open("text", {"type": "text", "text": ""}, out)
            out.append(self._block_delta(self.blocks - 1, {"type": "text_delta", "text": text}))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    self._tool_delta(call, position, out)

    def _tool_delta(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        n = call["index"] if _is_int(call.get("index")) else position
        fn = _obj(call.get("function"))
        block = self.tools.get(n)
        if block is None:
            tool = _tool_use({**call, "function": {**fn, "arguments": ""}}, f"toolu_{self.msg_id[4:]}_{n}")
            self._open("tool_use", tool, out)
            block = self.tools[n] = self.blocks - 1
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(self._block_delta(block, {"type": "input_json_delta", "partial_json": arguments}))

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        if self.open == kind and kind != "tool_use":
            return
        self._stop_block(out)
        start = {"type": "content_block_start", "index": self.blocks, "content_block": block}
        out.append(sse("content_block_start", start))
        self.open = kind
        self.blocks += 1

    def _stop_block(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1}))
            self.open = None

    @staticmethod
    def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def error_event(err: Any) -> bytes:
    """Anthropic's `error` event for chat's error object (a stream that broke mid-way)."""
    text = err.get("message") if isinstance(err, dict) else err
    error = {"type": "api_error", "message": text if isinstance(text, str) else "upstream error"}
    return sse("error", {"type": "error", "error": error})


def passthrough_event(event: bytes) -> bytes:
    """An event of an Anthropic upstream's own stream, passed on as it came, except the error event portway
    adds when that stream breaks mid-way (chat's shape): it becomes Anthropic's `error` event, which the
    SDKs raise (an unnamed event they would skip, and the stream would seem to end cleanly)."""
    if not event.startswith(b'data: {"error":'):
        return event
    data = event_data(event)
    return error_event(_obj(orjson.loads(data)).get("error") if data else None)


# -- errors ----------------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (other 4xx: invalid_request_error, other 5xx: api_error)."""
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error shape: {"type": "error", "error": {"type", "message"}, "request_id"}."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type(status), "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body
