"""OpenAI's Responses API (`POST /v1/responses`) as chat completions, and back. Pure: no I/O.

A Responses request becomes one chat request, served by the chat service like every other protocol (aliases,
fallbacks, limits, usage and cost). `read_request` checks and normalises the body (input items get ids, as
they are stored and listed); `chat_request` builds the chat payload from it and the history of a
`previous_response_id` chain; `response_from_chat` turns a chat.completion into a Response object, and
`protocols/responses_stream.StreamTranslator` turns chat chunks into the Responses event sequence, one
chunk at a time.

Mapping:
- `input`: a string is one user message; items are messages (`input_text`, `input_image`, `input_file`,
  `input_audio`, `output_text` / `refusal` in assistant messages), `function_call` (an assistant message's
  `tool_calls`; consecutive calls share one assistant message) and `function_call_output` (a `tool`
  message). `reasoning` items are accepted and left out (chat has no place for them).
- `instructions` → a leading system message (not carried over from a previous response, as on OpenAI);
  `developer` messages → `system` (what every chat upstream understands).
- `tools` (function tools, flattened) → chat tools; `tool_choice` (`auto` / `none` / `required`, a named
  function, `allowed_tools`); `text.format` json_schema / json_object → `response_format`; `text.verbosity`
  → `verbosity`; `reasoning.effort` → `reasoning_effort`; `max_output_tokens` → `max_completion_tokens`;
  `temperature`, `top_p`, `parallel_tool_calls`, `user`, `service_tier`, `prompt_cache_key`,
  `safety_identifier` as they are.
- Refused (UnsupportedParameter, naming the field) rather than ignored: non-function tools, `background`,
  `conversation`, `prompt` templates, item references, images by `file_id` only, files by URL only.
- Answer: text and refusal → one `message` item; each tool call → a `function_call` item; an empty
  answer → no items. finish `length` → status `incomplete` (`max_output_tokens`), `content_filter` →
  `incomplete` (`content_filter`); usage → input/output/total tokens with cached and reasoning details.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from portway.errors import UnsupportedParameter, ValidationError

IdMaker = Callable[[str], str]

# Request fields copied to the chat request under the same name.
_PASSED = ("temperature", "top_p", "user", "service_tier", "prompt_cache_key", "safety_identifier")
_REFUSED = ("conversation", "prompt")
_DETAILS = frozenset({"auto", "low", "high"})  # image detail levels chat completions knows
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `resp_…`, `msg_…`, `fc_…` (48 hex digits)."""
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(slots=True)
class ResponsesRequest:
    """A checked Responses request. `input_items` are this request's own items, normalised, with ids."""

    id: str
    created_at: int
    model: str
    input_items: list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    options: dict[str, Any] = field(default_factory=dict)  # chat fields, already in chat's names
    echo: dict[str, Any] = field(default_factory=dict)  # request fields a Response object repeats


def _bad(param: str, expected: str) -> ValidationError:
    return ValidationError(f"'{param}' must be {expected}", param=param)


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise _bad(name, expected)
    return value


# -- request ---------------------------------------------------------------------------------------------


def read_request(body: dict[str, Any], created_at: int, ids: IdMaker = new_id) -> ResponsesRequest:
    """Check and normalise a Responses create body (400s name the field)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string")
    for name in _REFUSED:
        if body.get(name) is not None:
            raise UnsupportedParameter(f"'{name}' is not supported by portway", param=name)
    if _optional(body, "background", bool, "a boolean"):
        raise UnsupportedParameter("'background: true' is not supported by portway", param="background")
    instructions = _optional(body, "instructions", str, "a string")
    previous = _optional(body, "previous_response_id", str, "a string")
    store = _optional(body, "store", bool, "a boolean")
    stream = _optional(body, "stream", bool, "a boolean")
    req = ResponsesRequest(
        id=ids("resp"),
        created_at=created_at,
        model=model,
        input_items=_input_items(body.get("input"), ids),
        instructions=instructions,
        previous_response_id=previous,
        store=store is not False,
        stream=bool(stream),
    )
    req.tools = _tools(body.get("tools"))
    if body.get("tool_choice") is not None:
        req.tool_choice = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        req.text = _text_config(body["text"])
    req.options = _options(body)
    metadata = _optional(body, "metadata", dict, "an object")
    req.echo = {
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": metadata or {},
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "reasoning": {"effort": req.options.get("reasoning_effort"), "summary": None},
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
    return req


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    limit = _optional(body, "max_output_tokens", int, "an integer")
    if limit is not None:
        if limit < 1:
            raise ValidationError("'max_output_tokens' must be at least 1", param="max_output_tokens")
        options["max_completion_tokens"] = limit
    for name in ("temperature", "top_p"):
        _optional(body, name, (int, float), "a number")
    for name in ("user", "service_tier", "prompt_cache_key", "safety_identifier"):
        _optional(body, name, str, "a string")
    options.update({name: body[name] for name in _PASSED if body.get(name) is not None})
    if _optional(body, "parallel_tool_calls", bool, "a boolean") is not None:
        options["parallel_tool_calls"] = body["parallel_tool_calls"]
    reasoning = _optional(body, "reasoning", dict, "an object")
    if reasoning and reasoning.get("effort") is not None:
        if not isinstance(reasoning["effort"], str):
            raise _bad("reasoning.effort", "a string")
        options["reasoning_effort"] = reasoning["effort"]
    return options


def _input_items(value: Any, ids: IdMaker) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, "input", ids)]
    if not isinstance(value, list):
        raise _bad("input", "a string or an array of input items")
    return [_item(raw, f"input[{i}]", ids) for i, raw in enumerate(value)]


def _item(raw: Any, where: str, ids: IdMaker) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _bad(where, "an object")
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        return _message(raw, where, ids)
    if kind == "function_call":
        call = {name: _string(raw, name, where) for name in ("call_id", "name")}
        arguments = raw.get("arguments", "")
        if not isinstance(arguments, str):
            raise _bad(f"{where}.arguments", "a string (JSON text)")
        item_id = raw.get("id") if isinstance(raw.get("id"), str) else ids("fc")
        return {"id": item_id, "type": "function_call", "status": "completed", **call, "arguments": arguments}
    if kind == "function_call_output":
        output = raw.get("output")
        if isinstance(output, list):
            output = [_tool_output_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)]
        elif not isinstance(output, str):
            raise _bad(f"{where}.output", "a string or an array of input_text parts")
        item_id = raw.get("id") if isinstance(raw.get("id"), str) else ids("fco")
        call_id = _string(raw, "call_id", where)
        return {
            "id": item_id,
            "type": "function_call_output",
            "status": "completed",
            "call_id": call_id,
            "output": output,
        }
    if kind == "reasoning":
        return dict(raw)  # kept (and stored) as sent; chat completions has no place for it
    if kind == "item_reference":
        raise UnsupportedParameter(
            f"'{where}': item references are not supported; send the item, or use previous_response_id",
            param=where,
        )
    raise UnsupportedParameter(f"'{where}.type' {kind!r} is not supported by portway", param=f"{where}.type")


def _string(raw: dict[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}.{name}", "a non-empty string")
    return value


def _message(raw: dict[str, Any], where: str, ids: IdMaker) -> dict[str, Any]:
    role = raw.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _bad(f"{where}.role", "one of user, system, developer, assistant")
    content = raw.get("content")
    if isinstance(content, str):
        parts = [text_part(content) if role == "assistant" else {"type": "input_text", "text": content}]
    elif isinstance(content, list):
        parts = [_part(p, f"{where}.content[{j}]", role) for j, p in enumerate(content)]
    else:
        raise _bad(f"{where}.content", "a string or an array of content parts")
    item_id = raw.get("id") if isinstance(raw.get("id"), str) else ids("msg")
    return {"id": item_id, "type": "message", "role": role, "content": parts, "status": "completed"}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _part(raw: Any, where: str, role: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _bad(where, "an object")
    kind = raw.get("type")
    if kind in ("input_text", "output_text"):
        text = raw.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", "a string")
        return text_part(text) if role == "assistant" else {"type": "input_text", "text": text}
    if kind == "refusal" and role == "assistant":
        if not isinstance(raw.get("refusal"), str):
            raise _bad(f"{where}.refusal", "a string")
        return {"type": "refusal", "refusal": raw["refusal"]}
    if role == "assistant":
        raise _bad(f"{where}.type", "output_text or refusal in an assistant message")
    if kind == "input_image":
        if not isinstance(raw.get("image_url"), str):
            if raw.get("file_id") is not None:
                raise UnsupportedParameter(f"'{where}.file_id': send the image as image_url", param=where)
            raise _bad(f"{where}.image_url", "a URL or a data URL")
        return {"type": "input_image", "image_url": raw["image_url"], "detail": raw.get("detail") or "auto"}
    if kind == "input_file":
        if not isinstance(raw.get("file_data"), str) and not isinstance(raw.get("file_id"), str):
            raise UnsupportedParameter(f"'{where}': send the file as file_data or file_id", param=where)
        keys = ("file_data", "file_id", "filename")
        return {"type": "input_file", **{k: raw[k] for k in keys if isinstance(raw.get(k), str)}}
    if kind == "input_audio":
        if not isinstance(raw.get("input_audio"), dict):
            raise _bad(f"{where}.input_audio", "an object with data and format")
        return {"type": "input_audio", "input_audio": raw["input_audio"]}
    raise UnsupportedParameter(f"'{where}.type' {kind!r} is not supported by portway", param=f"{where}.type")


def _tool_output_part(raw: Any, where: str) -> dict[str, Any]:
    text = raw.get("text") if isinstance(raw, dict) else None
    if isinstance(text, str) and raw.get("type") in ("input_text", "output_text"):
        return {"type": "input_text", "text": text}
    raise UnsupportedParameter(f"'{where}': a tool output carries text parts only here", param=where)


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", "an array")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise _bad(f"tools[{i}]", "an object")
        if tool.get("type") != "function":
            raise UnsupportedParameter(
                f"'tools[{i}].type' {tool.get('type')!r}: portway serves function tools only",
                param=f"tools[{i}].type",
            )
        name = _string(tool, "name", f"tools[{i}]")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(f"tools[{i}].parameters", "a JSON schema object")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad(f"tools[{i}].strict", "a boolean")
        description = tool.get("description")
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": description,
                "parameters": parameters,
                "strict": strict,
            }
        )
    return tools


def _tool_choice(value: Any) -> Any:
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    if isinstance(value, dict) and value.get("type") == "allowed_tools":
        tools = value.get("tools")
        if value.get("mode") not in ("auto", "required") or not isinstance(tools, list):
            raise _bad("tool_choice", "allowed_tools with mode auto or required and a tools array")
        if not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
            for t in tools
        ):
            raise UnsupportedParameter("'tool_choice.tools': function tools only", param="tool_choice.tools")
        return {"type": "allowed_tools", "mode": value["mode"], "tools": tools}
    raise _bad("tool_choice", "auto, none, required, a function {type, name} or allowed_tools")


def _text_config(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad("text", "an object")
    fmt = value.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format", "a json_schema format with a name and a schema object")
    elif kind not in ("text", "json_object"):
        raise _bad("text.format.type", "text, json_object or json_schema")
    config: dict[str, Any] = {"format": fmt}
    verbosity = value.get("verbosity")
    if verbosity is not None:
        if verbosity not in ("low", "medium", "high"):
            raise _bad("text.verbosity", "low, medium or high")
        config["verbosity"] = verbosity
    return config


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The chat request for `req`; `history` is the stored conversation before it (items, oldest first)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += chat_messages([*(history or ()), *req.input_items])
    if not messages:
        raise ValidationError("'input' is required: there is nothing to answer", param="input")
    chat: dict[str, Any] = {"model": req.model, "messages": messages, **req.options}
    if req.tools:
        chat["tools"] = [_chat_tool(t) for t in req.tools]
        if req.tool_choice != "auto":
            chat["tool_choice"] = _chat_tool_choice(req.tool_choice)
    else:
        chat.pop("parallel_tool_calls", None)  # chat refuses it without tools
    fmt = req.text["format"]
    if fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if "verbosity" in req.text:
        chat["verbosity"] = req.text["verbosity"]
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the usage of response.completed
    return chat


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None
    }
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if choice["type"] == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    tools = [{"type": "function", "function": {"name": t["name"]}} for t in choice["tools"]]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalised items → chat messages. A function call joins the assistant message just before it (one
    assistant turn with text and parallel tool calls), or starts one."""
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None  # the last message, when it is the assistant's
    for item in items:
        kind = item.get("type")
        if kind == "message" and item["role"] == "assistant":
            texts = [p["text"] for p in item["content"] if p["type"] == "output_text"]
            refusals = [p["refusal"] for p in item["content"] if p["type"] == "refusal"]
            assistant = {"role": "assistant", "content": "".join(texts) if texts else None}
            if refusals:
                assistant["refusal"] = "".join(refusals)
            messages.append(assistant)
        elif kind == "message":
            role = "user" if item["role"] == "user" else "system"
            messages.append({"role": role, "content": _chat_content(item["content"])})
            assistant = None
        elif kind == "function_call":
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                messages.append(assistant)
            function = {"name": item["name"], "arguments": item["arguments"]}
            call = {"id": item["call_id"], "type": "function", "function": function}
            assistant.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else "".join(p["text"] for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
            assistant = None
    return messages


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part is plain text (what every chat upstream takes); anything else a list of parts."""
    if len(parts) == 1 and parts[0]["type"] == "input_text":
        return str(parts[0]["text"])
    return [_chat_part(p) for p in parts]


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind == "input_text":
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        image = {"url": part["image_url"]}
        if part.get("detail") in _DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return {"type": "file", "file": {k: v for k, v in part.items() if k != "type"}}
    return {"type": "input_audio", "input_audio": part["input_audio"]}


# -- answer ----------------------------------------------------------------------------------------------


def skeleton(req: ResponsesRequest, model: str, status: str) -> dict[str, Any]:
    """A Response object with no output yet: what it repeats of the request, and its state."""
    return {
        "id": req.id,
        "object": "response",
        "created_at": req.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "model": model,
        "output": [],
        "previous_response_id": req.previous_response_id,
        "store": req.store,
        "text": req.text,
        "tool_choice": req.tool_choice,
        "tools": req.tools,
        "usage": None,
        **req.echo,
    }


def usage(raw: Any) -> dict[str, Any] | None:
    """Chat usage → Responses usage (cached prompt tokens, reasoning tokens); None without usage."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    pd = prompt_details if isinstance(prompt_details, dict) else {}
    cd = completion_details if isinstance(completion_details, dict) else {}
    total = raw.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": pd.get("cached_tokens") or 0,
            "cache_write_tokens": pd.get("cache_write_tokens") or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": cd.get("reasoning_tokens") or 0},
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def finish(response: dict[str, Any], reason: Any, completed_at: int | None) -> None:
    """Status and incomplete_details from the chat finish reason."""
    if reason in INCOMPLETE:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": INCOMPLETE[reason]}
    else:
        response["status"] = "completed"
        if completed_at is not None:
            response["completed_at"] = completed_at


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def response_from_chat(
    req: ResponsesRequest, body: bytes, completed_at: int | None = None, ids: IdMaker = new_id
) -> dict[str, Any]:
    """A chat.completion (the upstream's bytes) → the Response object."""
    chat = orjson.loads(body)
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = as_dict(choice.get("message"))
    model = chat.get("model") if isinstance(chat.get("model"), str) else req.model
    response = skeleton(req, model, "completed")
    finish(response, choice.get("finish_reason"), completed_at)
    item_status = "incomplete" if response["status"] == "incomplete" else "completed"
    parts: list[dict[str, Any]] = []
    text = content_text(message.get("content"))
    if text:
        parts.append(text_part(text))
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    output = response["output"]
    if parts:
        output.append(
            {
                "id": ids("msg"),
                "type": "message",
                "status": item_status,
                "role": "assistant",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = as_dict(call.get("function"))
        output.append(
            {
                "id": ids("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": call.get("id") or ids("call"),
                "name": function.get("name") or "",
                "arguments": function.get("arguments") or "",
            }
        )
    response["usage"] = usage(chat.get("usage"))
    return response


def output_text(response: dict[str, Any]) -> str:
    """All output_text of a Response, joined (what the SDKs call `output_text`)."""
    return "".join(
        part["text"]
        for item in response["output"]
        if item.get("type") == "message"
        for part in item["content"]
        if part.get("type") == "output_text"
    )
