"""Chat completions <-> Gemini's generateContent, both ways: pure functions, no IO, golden-tested.

- `build_body`: a chat completions body -> a GenerateContentRequest. System / developer messages ->
  `systemInstruction`; user -> role `user` (text, images as `inlineData` from data URLs or `fileData` for
  other URLs, audio, files); assistant -> role `model` (text and `functionCall` parts); tool results ->
  `functionResponse` parts, named after the tool call they answer. Consecutive turns of one role are merged
  (parallel function responses must share one turn). Schemas go through `gemini_schema`.
- `completion_from`: a GenerateContentResponse -> a chat.completion; `StreamTranslator`: the events of
  `streamGenerateContent?alt=sse` -> chat.completion.chunk events (and `[DONE]`, which Gemini never sends).
- Gemini has no tool call ids: each call gets a generated `call_…` id. Gemini 3 wants its thought
  signatures back with function calls: they travel in `tool_calls[].extra_content.google.thought_signature`
  (as in Google's own OpenAI compatibility layer), and a history without one gets Google's documented
  placeholder so a conversation started elsewhere still validates.
- Usage: prompt = promptTokenCount (+ toolUsePromptTokenCount); completion = candidatesTokenCount +
  thoughtsTokenCount (thinking is billed as output), with cached and reasoning tokens in the details.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.gemini_schema import SchemaMode, function_declaration, response_schema
from portway.providers.openai_compat import _status_kind
from portway.providers.sse import DONE_EVENT, encode_event

# Google's documented stand-in for a thought signature a history never had (a conversation begun on another
# model, or by a client that dropped it): without one, Gemini 3 rejects a function call in the history.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*?);base64,(.*)", re.DOTALL)
_AUDIO_TYPES = {"mp3": "audio/mp3", "wav": "audio/wav"}
_ROLES = {"user": "user", "tool": "user", "function": "user", "assistant": "model"}

NewId = Callable[[], str]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def bad_request(param: str, message: str) -> UpstreamFailure:
    """A request Gemini cannot be sent: the client's to fix, so returned as a 400 (no fallback)."""
    return UpstreamFailure(FailureKind.BAD_REQUEST, message, status=400, param=param)


# -- request: chat completions -> Gemini ---------------------------------------------------------------


def build_body(payload: dict[str, Any], schemas: SchemaMode = "translate") -> dict[str, Any]:
    """The GenerateContentRequest for a chat completions body (fields Gemini has no use for are dropped)."""
    system, contents = _contents(payload.get("messages"))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    tools = _tools(payload.get("tools"), schemas)
    if tools:
        body["tools"] = [{"functionDeclarations": tools}]
        choice = _tool_config(payload.get("tool_choice"))
        if choice:
            body["toolConfig"] = {"functionCallingConfig": choice}
    config = _generation_config(payload, schemas)
    if config:
        body["generationConfig"] = config
    return body


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results that answer them
    for i, msg in enumerate(messages if isinstance(messages, list) else ()):
        role = msg.get("role") if isinstance(msg, dict) else None
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system += _text_parts(msg.get("content"), where)
            continue
        if role == "user":
            parts = _user_parts(msg.get("content"), where)
        elif role == "assistant":
            parts = _assistant_parts(msg, where, names)
        elif role in ("tool", "function"):
            parts = [_function_response(msg, where, names)]
        else:
            raise bad_request(f"{where}.role", f"message role {role!r} is not supported by this provider")
        if not parts:
            continue  # Gemini rejects a turn without parts (and an empty text part)
        if contents and contents[-1]["role"] == _ROLES[role]:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": _ROLES[role], "parts": parts})
    if not contents and system:  # only a system prompt: Gemini needs one turn, so it becomes the turn
        return [], [{"role": "user", "parts": system}]
    if not contents:
        raise bad_request("messages", "at least one user or assistant message with content is required")
    return system, contents


def _text_of(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content", "content must be a string or an array of parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            raise bad_request(f"{where}.content[{j}]", f"a content part of type {kind!r} is not allowed here")
        text = part.get(kind)
        if isinstance(text, str) and text:
            texts.append(text)
    return texts


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    return [{"text": t} for t in _text_of(content, where)]


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_parts(content, where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        spot = f"{where}.content[{j}]"
        if kind == "text":
            parts += _text_parts([part], where)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_media_part(url, spot, "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            fmt = audio.get("format") if isinstance(audio, dict) else None
            data = audio.get("data") if isinstance(audio, dict) else None
            if not isinstance(data, str) or not data:
                raise bad_request(f"{spot}.input_audio.data", "input_audio needs base64 data")
            parts.append(
                {"inlineData": {"mimeType": _AUDIO_TYPES.get(str(fmt), f"audio/{fmt}"), "data": data}}
            )
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            parts.append(_media_part(file.get("file_data"), f"{spot}.file.file_data", "application/pdf"))
        else:
            raise bad_request(spot, f"a content part of type {kind!r} is not supported by this provider")
    return parts


def _media_part(url: Any, where: str, default_type: str) -> dict[str, Any]:
    """A data URL travels inline; any other URL as `fileData` for Gemini to fetch (portway never does)."""
    if not isinstance(url, str) or not url:
        raise bad_request(where, "a URL or data URL is required")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise bad_request(where, "a data URL must be base64: data:<type>;base64,<data>")
        return {"inlineData": {"mimeType": match.group(1), "data": match.group(3)}}
    import mimetypes  # (only for URLs, rare: not at import time)

    guessed = mimetypes.guess_type(urllib.parse.urlsplit(url).path)[0]
    return {"fileData": {"mimeType": guessed or default_type, "fileUri": url}}


def _assistant_parts(msg: dict[str, Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _text_parts(msg.get("content"), where)
    calls = msg.get("tool_calls")
    for j, call in enumerate(calls if isinstance(calls, list) else ()):
        spot = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request(f"{spot}.function.name", "a tool call needs a function name")
        raw = fn.get("arguments") if isinstance(fn, dict) else None
        args = _arguments(raw, f"{spot}.function.arguments")
        if isinstance(call.get("id"), str):
            names[call["id"]] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        signature = _signature(call)
        if signature is None and j == 0:  # the first call of a step carries the step's signature
            signature = SKIP_SIGNATURE
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(raw: Any, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        args = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise bad_request(where, "tool call arguments must be a JSON object")
    return args


def _signature(call: dict[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _function_response(msg: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    name = name or msg.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(
            f"{where}.tool_call_id", "a tool result must answer a tool call of an earlier message"
        )
    text = "".join(_text_of(msg.get("content"), where))
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    # Gemini wants an object; anything else is the function's "output" (its documented key).
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _tools(tools: Any, schemas: SchemaMode) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(fn, dict)
        ):
            raise bad_request(f"tools[{i}]", "only function tools are supported by this provider")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}].function.name", "a function tool needs a name")
        declarations.append(function_declaration(fn, schemas))
    return declarations


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise bad_request("tool_choice", "tool_choice must be auto, none, required or a named function")
    return {"mode": "ANY", "allowedFunctionNames": [name]}


_GENERATION = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)


def _generation_config(payload: dict[str, Any], schemas: SchemaMode) -> dict[str, Any]:
    config = {dst: payload[src] for src, dst in _GENERATION if payload.get(src) is not None}
    limit = payload.get("max_completion_tokens")
    limit = payload.get("max_tokens") if limit is None else limit
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    fmt = payload.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        config["responseMimeType"] = "application/json"
        if isinstance(schema, dict):
            config.update(response_schema(schema, schemas))
    elif kind not in (None, "text"):
        raise bad_request("response_format.type", f"response_format {kind!r} is not supported")
    return config


# -- response: Gemini -> chat completions --------------------------------------------------------------


def finish_reason(reason: Any, called: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"  # STOP, and the rest (OTHER, MALFORMED_FUNCTION_CALL...)


def usage_from(meta: Any) -> dict[str, Any] | None:
    """Chat completions usage for Gemini's usageMetadata; None when the upstream sent none."""
    if not isinstance(meta, dict):
        return None
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = _count(meta, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(meta, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _count(meta: dict[str, Any], name: str) -> int:
    value = meta.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _split_parts(parts: Any, new_id: NewId, first: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """The visible text and the tool calls of a candidate's parts (thought summaries are not the answer)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        fc = part.get("functionCall")
        if isinstance(fc, dict) and isinstance(fc.get("name"), str):
            call_id = fc.get("id") if isinstance(fc.get("id"), str) and fc.get("id") else new_id()
            args = fc.get("args") if isinstance(fc.get("args"), dict) else {}
            call: dict[str, Any] = {
                "index": first + len(calls),
                "id": call_id,
                "type": "function",
                "function": {"name": fc["name"], "arguments": orjson.dumps(args).decode()},
            }
            if isinstance(part.get("thoughtSignature"), str):
                call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
            calls.append(call)
    return "".join(texts), calls


def completion_from(obj: dict[str, Any], model: str, new_id: NewId, created: int) -> dict[str, Any]:
    """The chat.completion for a GenerateContentResponse (every candidate a choice, in its index order)."""
    choices: list[dict[str, Any]] = []
    candidates = obj.get("candidates")
    for n, cand in enumerate(candidates if isinstance(candidates, list) else ()):
        if not isinstance(cand, dict):
            continue
        content = cand.get("content")
        text, calls = _split_parts(content.get("parts") if isinstance(content, dict) else None, new_id)
        for call in calls:
            del call["index"]  # (a streaming field)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        index = _index(cand, n)
        reason = finish_reason(cand.get("finishReason"), bool(calls))
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": reason})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason), or nothing came back
        blocked = isinstance(obj.get("promptFeedback"), dict) and obj["promptFeedback"].get("blockReason")
        message = {"role": "assistant", "content": ""}
        reason = "content_filter" if blocked else "stop"
        choices.append({"index": 0, "message": message, "logprobs": None, "finish_reason": reason})
    choices.sort(key=lambda c: c["index"])
    completion: dict[str, Any] = {
        "id": _completion_id(obj),
        "object": "chat.completion",
        "created": created,
        "model": _model_of(obj, model),
        "choices": choices,
    }
    usage = usage_from(obj.get("usageMetadata"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def _index(cand: dict[str, Any], n: int) -> int:
    index = cand.get("index")
    return index if isinstance(index, int) else n


def _completion_id(obj: dict[str, Any]) -> str:
    rid = obj.get("responseId")
    return "chatcmpl-" + (rid if isinstance(rid, str) and rid else secrets.token_hex(12))


def _model_of(obj: dict[str, Any], model: str) -> str:
    version = obj.get("modelVersion")
    return version if isinstance(version, str) and version else model


class StreamTranslator:
    """Gemini's stream events in, chat.completion.chunk events out; pure (no IO), one per stream.

    Gemini sends each function call whole, so each becomes one tool_calls delta with all its arguments.
    Every event may carry usageMetadata: the last one counts. The stream has no `[DONE]`; `end()` adds
    the usage chunk (when the client asked for one) and `[DONE]`, or raises if no candidate finished.
    """

    def __init__(
        self, model: str, include_usage: bool, new_id: NewId = new_call_id, created: int = 0
    ) -> None:
        self.model = model
        self.usage: dict[str, Any] | None = None
        self._include_usage = include_usage
        self._new_id = new_id
        self._created = created or int(time.time())
        self._id: str | None = None
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate index -> tool calls so far

    def feed(self, obj: Any) -> list[bytes]:
        if not isinstance(obj, dict):
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent an event that is not an object")
        if "error" in obj:
            raise stream_error(obj)
        if self._id is None:
            self._id = _completion_id(obj)
            self.model = _model_of(obj, self.model)
        if obj.get("usageMetadata") is not None:
            self.usage = usage_from(obj["usageMetadata"])
        out: list[bytes] = []
        candidates = obj.get("candidates")
        for n, cand in enumerate(candidates if isinstance(candidates, list) else ()):
            if isinstance(cand, dict):
                out += self._candidate(cand, _index(cand, n))
        feedback = obj.get("promptFeedback")
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            out += self._candidate({"finishReason": "SAFETY"}, 0)  # the prompt was blocked: no answer
        return out

    def _candidate(self, cand: dict[str, Any], index: int) -> list[bytes]:
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        text, calls = _split_parts(parts, self._new_id, self._calls.get(index, 0))
        delta: dict[str, Any] = {}
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", "content": text}
        elif text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = calls
            self._calls[index] = self._calls.get(index, 0) + len(calls)
        out = [self._chunk(index, delta, None)] if delta else []
        reason = cand.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            out.append(self._chunk(index, {}, finish_reason(reason, index in self._calls)))
        return out

    def _chunk(self, index: int, delta: dict[str, Any], reason: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return encode_event({**self._base(), "choices": [choice]})

    def _base(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
        }

    def end(self) -> list[bytes]:
        if not self._finished or self._finished != self._started:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream stream ended before its finish reason")
        out: list[bytes] = []
        if self._include_usage and self.usage is not None:
            out.append(encode_event({**self._base(), "choices": [], "usage": self.usage}))
        out.append(DONE_EVENT)
        return out


def stream_error(obj: dict[str, Any]) -> UpstreamFailure:
    """An error object inside a stream: the upstream gave up mid-way (the gateway says so to the client)."""
    err = obj.get("error")
    status = err.get("code") if isinstance(err, dict) else None
    label = err.get("status") if isinstance(err, dict) else None
    return UpstreamFailure(
        FailureKind.SERVER if not isinstance(status, int) or status >= 500 else _status_kind(status),
        f"upstream reported an error: {label if isinstance(label, str) else 'unknown'}",
        status=status if isinstance(status, int) else None,
    )
