"""Anthropic's Messages API for the fake upstream: `POST /v1/messages` (JSON or SSE events),
`POST /v1/messages/count_tokens` and `GET /v1/models` (MODELS, at most PAGE a page: `limit`, `after_id`,
`has_more`, `last_id`; upstream.py hands it a listing that carries `anthropic-version` or `x-api-key`),
errors in Anthropic's shape, the fake's journal (model listings are counted, not journaled).

Answers depend only on the request body:
- the last user turn holds `tool_result` blocks -> "Result: <their text>" (end_turn);
- tools offered and `tool_choice` not none -> one `tool_use` block per tool (only the named one for
  `{"type": "tool"}`), its input built from the tool's `input_schema` (strings: the last user text,
  integers 42, numbers 4.5, booleans true, arrays one item, the first of an enum), stop_reason tool_use;
- `output_config.format` json_schema -> that JSON as the text;
- else "Echo: <last user text>": `max_tokens` cuts it by words (max_tokens), a `stop_sequences` entry cuts
  it where it occurs (stop_sequence). `thinking` enabled puts a thinking block first.
Usage: the system prompt's words are reported as cache reads (as if cached), the other words of the request
as input_tokens; output_tokens is the number of pieces the answer streams in (text: words, tool input: 7
characters a piece), the same for JSON and SSE.

Strict like the real API (so a translation bug fails here, not in production): unknown top-level fields,
no `max_tokens`, a `system` role in `messages`, a tool_result without a tool_use of that id in the assistant
turn before it, and no `anthropic-version` header are 400 invalid_request_error.

Faults (`model@fault`, the `x-fake-fault` header, a script, the key as in upstream.py): 400 401 403 404 413
429[:seconds] 500 529 (overloaded_error), reset, hang, slow:seconds, garbage, cut (a stream cut after its
first events; JSON cut in half), truncated (a stream that ends cleanly but without message_stop),
streamerror (an overloaded_error event 0.1 s after the first delta), errorfirst (a 200 stream whose first
event is an error).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.upstream import SSE_HEADERS, RecordedRequest, _abort, _dumps, _gone

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream

PIECE = 7  # characters of a tool's input JSON per input_json_delta
PAGE = 2  # models per page of GET /v1/models, whatever `limit` asks: MODELS come in two pages
MODELS: list[dict[str, Any]] = [
    {
        "type": "model",
        "id": "claude-sonnet-4-5-20250929",
        "display_name": "Claude Sonnet 4.5",
        "created_at": "2025-09-29T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-opus-4-1-20250805",
        "display_name": "Claude Opus 4.1",
        "created_at": "2025-08-05T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-3-5-haiku-20241022",
        "display_name": "Claude Haiku 3.5",
        "created_at": "2024-10-22T00:00:00Z",
    },
]
_ERRORS = {
    400: ("invalid_request_error", "Fake upstream rejected the request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "cache_control",
        "container",
        "inference_geo",
        "metadata",
        "output_config",
        "service_tier",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)
_BLOCKS = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking"})


def add_routes(up: FakeUpstream, app: web.Application) -> None:
    app.router.add_post("/v1/messages", partial(_messages, up))
    app.router.add_post("/v1/messages/count_tokens", partial(_count_tokens, up))


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, default = _ERRORS[status]
    return {"type": "error", "error": {"type": kind, "message": message or default}, "request_id": "req_fake"}


# -- answers ------------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(b["text"] for b in parts if isinstance(b, dict) and isinstance(b.get("text"), str))


def _words(body: dict[str, Any]) -> tuple[int, int]:
    """(system words, other words) of the request."""
    system = len(_text(body.get("system")).split())
    other = 0
    for msg in body.get("messages") or []:
        content = msg.get("content")
        other += len(_text(content).split())
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                other += len(_text(block.get("content")).split())
    return system, other


def value_for(schema: Any, text: str) -> Any:
    """A value of the schema's shape (the fake's "model output")."""
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: value_for(v, text) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [value_for(schema.get("items"), text)]
    return {"integer": 42, "number": 4.5, "boolean": True, "null": None}.get(kind, text) if kind else text


def _pieces(text: str) -> list[str]:
    words = text.split()
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The Message for a (valid) request, with `_pieces` per block: how each streams."""
    messages = body["messages"]
    user = [m for m in messages if m["role"] == "user"]
    last = user[-1]["content"] if user else ""
    results = [b for b in last if b.get("type") == "tool_result"] if isinstance(last, list) else []
    text = _text(last)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    blocks: list[dict[str, Any]] = []
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled":
        blocks.append({"type": "thinking", "thinking": f"Thinking about: {text}", "signature": "sig_fake"})
    stop, sequence = "end_turn", None
    choice = body.get("tool_choice") or {"type": "auto"}
    tools = [t for t in body.get("tools") or [] if choice["type"] != "tool" or t["name"] == choice["name"]]
    fmt = (body.get("output_config") or {}).get("format")
    if results:
        reply = "Result: " + " ".join(_text(r.get("content")) for r in results)
        blocks.append({"type": "text", "text": reply})
    elif tools and choice["type"] != "none":
        for i, tool in enumerate(tools):
            args = value_for(tool["input_schema"], text)
            blocks.append(
                {"type": "tool_use", "id": f"toolu_{digest}{i}", "name": tool["name"], "input": args}
            )
        stop = "tool_use"
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        blocks.append({"type": "text", "text": json.dumps(value_for(fmt.get("schema"), text))})
    else:
        reply, stop, sequence = _echo(text, body)
        blocks.append({"type": "text", "text": reply})
    system_words, other_words = _words(body)
    usage = {
        "input_tokens": other_words,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": system_words,
        "output_tokens": sum(len(_stream_pieces(b)) for b in blocks),
    }
    thinking = sum(len(_stream_pieces(b)) for b in blocks if b["type"] == "thinking")
    if thinking:
        usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return {
        "id": f"msg_{digest}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": sequence,
        "usage": usage,
    }


def _echo(text: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    reply = " ".join(("Echo: " + text).split())
    for seq in body.get("stop_sequences") or []:
        if seq in reply:
            return reply[: reply.index(seq)], "stop_sequence", seq
    words = reply.split()
    if len(words) > body["max_tokens"]:
        return " ".join(words[: body["max_tokens"]]), "max_tokens", None
    return reply, "end_turn", None


def _stream_pieces(block: dict[str, Any]) -> list[str]:
    if block["type"] == "tool_use":
        raw = json.dumps(block["input"])
        return [raw[i : i + PIECE] for i in range(0, len(raw), PIECE)]
    return _pieces(block["text"] if block["type"] == "text" else block["thinking"])


def events(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE events of a Message, in Anthropic's order (a ping after the first block's start)."""
    start = {**msg, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**msg["usage"], "output_tokens": 1}
    start["usage"].pop("output_tokens_details", None)
    out: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(msg["content"]):
        kind = block["type"]
        empty = {
            "text": {"type": "text", "text": ""},
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
        }.get(kind) or {**block, "input": {}}
        out.append({"type": "content_block_start", "index": i, "content_block": empty})
        if i == 0:
            out.append({"type": "ping"})
        delta_of = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}[kind]
        field = {"text": "text", "thinking": "thinking", "tool_use": "partial_json"}[kind]
        if kind == "tool_use":  # the real API opens a tool's input with an empty piece
            out.append({"type": "content_block_delta", "index": i, "delta": {"type": delta_of, field: ""}})
        for piece in _stream_pieces(block):
            out.append({"type": "content_block_delta", "index": i, "delta": {"type": delta_of, field: piece}})
        if kind == "thinking":
            delta = {"type": "signature_delta", "signature": block["signature"]}
            out.append({"type": "content_block_delta", "index": i, "delta": delta})
        out.append({"type": "content_block_stop", "index": i})
    delta = {"stop_reason": msg["stop_reason"], "stop_sequence": msg["stop_sequence"]}
    usage = {"output_tokens": msg["usage"]["output_tokens"]}
    if "output_tokens_details" in msg["usage"]:
        usage["output_tokens_details"] = msg["usage"]["output_tokens_details"]
    out.append({"type": "message_delta", "delta": delta, "usage": usage})
    out.append({"type": "message_stop"})
    return out


def encode(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\n".encode() + b"data: " + _dumps(event) + b"\n\n"


# -- validation ---------------------------------------------------------------------------------------------


def invalid(body: Any) -> str | None:
    """What the real API would refuse in this body (None: nothing)."""
    if not isinstance(body, dict):
        return "body: Input should be an object"
    extra = sorted(set(body) - _FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not isinstance(body.get("max_tokens"), int):
        return "model and max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    previous: set[str] = set()
    for i, msg in enumerate(messages):
        problem = _invalid_message(msg, previous)
        if problem:
            return f"messages.{i}: {problem}"
        blocks = msg["content"] if isinstance(msg["content"], list) else []
        previous = (
            {b["id"] for b in blocks if b.get("type") == "tool_use"} if msg["role"] == "assistant" else set()
        )
    for tool in body.get("tools") or []:
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if (
            not isinstance(tool.get("name"), str)
            or not isinstance(schema, dict)
            or schema.get("type") != "object"
        ):
            return "tools: each tool needs a name and an input_schema of type object"
    choice = body.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        return "tool_choice: Input tag does not match"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    return None


def _invalid_message(msg: Any, tool_uses: set[str]) -> str | None:
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        return "role: Input should be 'user' or 'assistant'"
    content = msg.get("content")
    if isinstance(content, str):
        return None if content else "content: text content blocks must be non-empty"
    if not isinstance(content, list) or not content:
        return "content: Field required"
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCKS:
            return f"content: unknown block type {kind!r}"
        if kind == "text" and not block.get("text"):
            return "content: text content blocks must be non-empty"
        if kind == "tool_result" and block.get("tool_use_id") not in tool_uses:
            return "tool_result: no tool_use block with this id in the previous assistant message"
        if kind == "tool_use" and not (
            isinstance(block.get("id"), str) and isinstance(block.get("input"), dict)
        ):
            return "tool_use: id and input (an object) are required"
        if kind in ("image", "document") and (block.get("source") or {}).get("type") not in ("base64", "url"):
            return "source: Input tag does not match"
    return None


# -- handlers -----------------------------------------------------------------------------------------------


async def _read(up: FakeUpstream, request: web.Request) -> tuple[RecordedRequest, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    key = request.headers.get("x-api-key")
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    fault = up._pick_fault(request, model, key, scripted=True)
    rec = up._new_record(request, fault, key, body if isinstance(body, dict) else None)
    return rec, body


async def _count_tokens(up: FakeUpstream, request: web.Request) -> web.StreamResponse:
    rec, body = await _read(up, request)
    if rec.fault != "ok":
        return await _http_fault(up, request, rec)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return await _send(up, request, rec, 400, error_body(400, "messages: Field required"))
    return await _send(up, request, rec, 200, {"input_tokens": sum(_words(body))})


async def _messages(up: FakeUpstream, request: web.Request) -> web.StreamResponse:
    rec, body = await _read(up, request)
    try:
        kind, _, arg = rec.fault.partition(":")
        if kind not in ("ok", "nousage", "cut", "truncated", "streamerror", "errorfirst", "slow"):
            return await _http_fault(up, request, rec)
        if kind == "slow" and not await up._sleep(request, rec, float(arg)):
            return web.Response()
        problem = "anthropic-version: header is required" if "anthropic-version" not in rec.headers else None
        problem = problem or invalid(body)
        if problem:
            return await _send(up, request, rec, 400, error_body(400, problem))
        msg = answer(body)
        if not body.get("stream"):
            if kind == "cut":
                return await _cut(request, rec, _dumps(msg))
            return await _send(up, request, rec, 200, msg)
        return await _stream(request, rec, events(msg), kind)
    except (asyncio.CancelledError, ConnectionResetError) as exc:
        rec.completed = False
        rec.gone()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return web.Response()


async def list_models(up: FakeUpstream, request: web.Request) -> web.StreamResponse:
    """`GET /v1/models` as Anthropic answers it; faults as for the OpenAI listing (`up.models_fault`, the
    key: none or `bad*` -> 401), never the chat scripts."""
    key = request.headers.get("x-api-key")
    fault = up.models_fault or up._pick_fault(request, None, key, scripted=False)
    headers = {k.lower(): v for k, v in request.headers.items()}
    rec = RecordedRequest(request.path_qs, None, key, False, None, headers, fault)
    up.count_listing()
    if fault != "ok":
        return await _http_fault(up, request, rec)
    if "anthropic-version" not in rec.headers:
        return await _send(up, request, rec, 400, error_body(400, "anthropic-version: header is required"))
    limit = request.query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        return await _send(up, request, rec, 400, error_body(400, "limit: must be between 1 and 1000"))
    ids = [m["id"] for m in MODELS]
    after = request.query.get("after_id")
    if after is not None and after not in ids:
        return await _send(up, request, rec, 400, error_body(400, f"after_id: unknown model {after!r}"))
    start = 0 if after is None else ids.index(after) + 1
    page = MODELS[start : start + min(int(limit), PAGE)]
    body = {
        "data": page,
        "has_more": start + len(page) < len(MODELS),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
    return await _send(up, request, rec, 200, body)


async def _http_fault(up: FakeUpstream, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
    kind, _, arg = rec.fault.partition(":")
    if kind == "hang":
        await up._sleep(request, rec, float("inf"))
        return web.Response()
    if kind == "reset":
        _abort(request)
        return web.Response()
    if kind == "garbage":
        junk = web.Response(body=b"<html>oops</html>\n", headers={"Content-Type": "application/json"})
        return await up._finish(request, rec, junk)
    status = int(kind) if kind.isdigit() and int(kind) in _ERRORS else 400
    message = None if status != 400 or kind == "400" else f"unknown fake fault {rec.fault!r}"
    headers = {"retry-after": arg or "1"} if status == 429 else {}
    return await _send(up, request, rec, status, error_body(status, message), headers)


async def _send(
    up: FakeUpstream,
    request: web.Request,
    rec: RecordedRequest,
    status: int,
    obj: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    resp = web.Response(status=status, body=_dumps(obj), headers=headers, content_type="application/json")
    return await up._finish(request, rec, resp)


async def _cut(request: web.Request, rec: RecordedRequest, payload: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(payload)
    await resp.prepare(request)
    await resp.write(payload[: len(payload) // 2])
    _abort(request)
    return resp


async def _stream(
    request: web.Request, rec: RecordedRequest, evs: list[dict[str, Any]], kind: str
) -> web.StreamResponse:
    overloaded = {"type": "error", "error": error_body(529)["error"]}
    if kind == "errorfirst":
        evs = [overloaded]
    elif kind == "streamerror":
        first = next(i for i, e in enumerate(evs) if e["type"] == "content_block_delta")
        evs = [*evs[: first + 1], overloaded]
    elif kind in ("cut", "truncated"):
        evs = evs[:4]
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await resp.prepare(request)
    for i, event in enumerate(evs):
        if _gone(request):
            rec.gone()
            return resp
        if event is overloaded and kind == "streamerror":
            await asyncio.sleep(0.1)  # later than the first read: after the gateway committed to the stream
        rec.completed = kind != "cut" and i == len(evs) - 1  # optimistic, as in upstream.py
        await resp.write(encode(event))  # one write per event: boundaries reach the socket separately
    if kind == "cut":
        _abort(request)
        return resp
    await resp.write_eof()
    return resp
