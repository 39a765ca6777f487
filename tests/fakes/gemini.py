"""Google's Gemini API for the fake upstream: `generateContent` and `streamGenerateContent?alt=sse`.

`POST /v1beta/models/{model}:generateContent` (and `/v1/...`), the key in `x-goog-api-key` (a `key=` in the
URL is refused: portway must never put it there). Requests are checked the way Gemini checks them (unknown
fields, unknown Schema keywords such as `additionalProperties`, empty parts, an OBJECT without properties in
function parameters, as many function responses as the model's turn had calls, thought signatures on
`*think*` models), so a translation mistake fails here as it would at Google, with its 400 INVALID_ARGUMENT.

Answers depend only on the request:
- the last turn holds function responses -> text "Tool said: <their responses as JSON>";
- function calling mode ANY, or AUTO with a declared function named in the last user text -> function calls
  (the allowed / named ones; only the first unless the text says "parallel"), args made from the schema
  (strings are the user's text, integers 42, numbers 2.5, booleans true, enums their first value);
- responseMimeType application/json -> JSON made from responseSchema / responseJsonSchema the same way;
- otherwise "Echo: <text>", one word per stream event; maxOutputTokens cuts it (MAX_TOKENS).
Usage: prompt = words of every text part; candidates = words (or one per call); a `*think*` model adds 5
thought tokens (and thought signatures), a `*cache*` model reports 2 cached tokens.

`GET /v1beta/models` (and `/v1/...`) lists MODELS, at most PAGE a page (`pageSize`, `pageToken`,
`nextPageToken`); the key in `x-goog-api-key` as for chat, `up.models_fault` fails it, and it is counted in
`up.model_listings`, not journaled.

Faults as for chat (header, script, `model@fault`, key; `bad*` / no key -> Gemini's 400 API_KEY_INVALID,
`forbidden*` -> 403 PERMISSION_DENIED, `429:N` -> RESOURCE_EXHAUSTED with RetryInfo N s), plus
`@streamerror` (an error event 0.2 s after the first one), `@blocked` (promptFeedback.blockReason, no
candidate) and `@empty` (a candidate without parts).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.upstream import SSE_HEADERS, RecordedRequest, _abort, _dumps, _gone, parse_fault

if TYPE_CHECKING:
    from tests.fakes.upstream import FakeUpstream

# status -> (Google's status, message)
_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in the troubleshooting guide."),
    502: ("UNAVAILABLE", "The service is currently unavailable."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_OWN_FAULTS = {"streamerror", "blocked", "empty"}
PAGE = 2  # models per page of GET models, whatever `pageSize` asks: MODELS come in two pages
_CHAT_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]
MODELS: list[dict[str, Any]] = [
    {
        "name": "models/gemini-2.0-flash",
        "version": "2.0",
        "displayName": "Gemini 2.0 Flash",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": _CHAT_METHODS,
    },
    {
        "name": "models/text-embedding-004",  # not a chat model: portway's gemini type does not list it
        "version": "004",
        "displayName": "Text Embedding 004",
        "inputTokenLimit": 2048,
        "outputTokenLimit": 1,
        "supportedGenerationMethods": ["embedContent"],
    },
    {
        "name": "models/gemini-2.5-pro",
        "version": "2.5",
        "displayName": "Gemini 2.5 Pro",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": _CHAT_METHODS,
        "thinking": True,
    },
    {
        "name": "models/gemma-3-27b-it",
        "version": "001",
        "displayName": "Gemma 3 27B",
        "inputTokenLimit": 131072,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    },
]
_TOP = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings"}
_GENERATION = {
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "seed",
    "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema", "responseJsonSchema",
}  # fmt: skip
_SCHEMA = {
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "propertyOrdering", "anyOf", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "maxProperties", "pattern", "default", "example",
}  # fmt: skip
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse")


def add_routes(up: FakeUpstream, app: web.Application) -> None:
    app.router.add_post("/{version:v1beta|v1}/models/{target}", partial(_generate, up))
    app.router.add_get("/{version:v1beta|v1}/models", partial(_list_models, up))


def error_body(status: int, message: str | None = None, reason: str | None = None) -> dict[str, Any]:
    google, default = _STATUS.get(status, ("UNKNOWN", "Unknown error."))
    err: dict[str, Any] = {"code": status, "message": message or default, "status": google}
    if reason:
        err["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
    return {"error": err}


async def _generate(up: FakeUpstream, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    target = request.match_info["target"]
    model, _, method = (urllib.parse.unquote(target) if "%" in target else target).rpartition(":")
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    body = parsed if isinstance(parsed, dict) else None
    key = request.headers.get("x-goog-api-key")
    rec = up._new_record(request, up._pick_fault(request, model, key, scripted=True), key, body)
    rec.path, rec.model = request.path_qs, model
    rec.stream = method == "streamGenerateContent"
    if method not in ("generateContent", "streamGenerateContent"):
        return await _send(up, request, rec, 404, error_body(404, f"Unknown method {method}"))
    if "key" in request.query:
        return await _send(up, request, rec, 400, error_body(400, "the fake refuses an API key in the URL"))
    if rec.stream and request.query.get("alt") != "sse":
        return await _send(up, request, rec, 400, error_body(400, "the fake streams only with alt=sse"))
    kind, _, arg = rec.fault.partition(":")
    if kind not in _OWN_FAULTS:
        try:
            kind, arg = parse_fault(rec.fault)
        except ValueError as exc:
            return await _send(up, request, rec, 400, error_body(400, str(exc)))
        if kind == "slow" and not await up._sleep(request, rec, float(arg)):
            return web.Response()
        if kind not in ("ok", "slow", "slowchunks", "cut", "nousage"):
            return await _fault(up, request, rec, kind, arg)
    problem = "Request body must be JSON." if body is None else invalid(body, model)
    if problem is not None:
        return await _send(up, request, rec, 400, error_body(400, problem))
    assert body is not None
    events = answer_events(body, model, kind)
    if not rec.stream:
        return await _send(up, request, rec, 200, merge_events(events))
    return await _stream(up, request, rec, events, _gap(kind, arg), kind == "cut")


async def _list_models(up: FakeUpstream, request: web.Request) -> web.StreamResponse:
    key = request.headers.get("x-goog-api-key")
    fault = up.models_fault or up._pick_fault(request, None, key, scripted=False)
    headers = {k.lower(): v for k, v in request.headers.items()}
    rec = RecordedRequest(request.path_qs, None, key, False, None, headers, fault)
    up.count_listing()
    if "key" in request.query:
        return await _send(up, request, rec, 400, error_body(400, "the fake refuses an API key in the URL"))
    if fault != "ok":
        try:
            kind, arg = parse_fault(fault)
        except ValueError as exc:
            return await _send(up, request, rec, 400, error_body(400, str(exc)))
        return await _fault(up, request, rec, kind, arg)
    size = request.query.get("pageSize", "50")
    if not size.isdigit() or int(size) < 1:
        return await _send(up, request, rec, 400, error_body(400, "pageSize must be positive"))
    token = request.query.get("pageToken")
    start = 0 if token is None else _page_start(token)
    if start is None:
        return await _send(up, request, rec, 400, error_body(400, "Invalid page token."))
    end = start + min(int(size), PAGE)
    body: dict[str, Any] = {"models": MODELS[start:end]}
    if end < len(MODELS):
        body["nextPageToken"] = f"Ch{end}/+="  # opaque, with characters that must be quoted in a URL
    return await _send(up, request, rec, 200, body)


def _page_start(token: str) -> int | None:
    digits = token.removeprefix("Ch").removesuffix("/+=")
    return int(digits) if digits.isdigit() and token == f"Ch{digits}/+=" else None


def _gap(kind: str, arg: str) -> float:
    """Seconds between stream events: slowchunks' own; a stream error waits so it arrives on its own."""
    return float(arg) if kind == "slowchunks" else 0.2 if kind == "streamerror" else 0.0


async def _fault(
    up: FakeUpstream, request: web.Request, rec: RecordedRequest, kind: str, arg: str
) -> web.StreamResponse:
    """Google's answers for the shared HTTP faults; hang / reset / garbage as the shared fake does them."""
    if kind == "401":  # Google answers a bad or missing key with a 400, told apart by its reason
        body = error_body(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
        return await _send(up, request, rec, 400, body)
    if kind == "429":
        body = error_body(429)
        body["error"]["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{arg}s"}
        ]
        return await _send(up, request, rec, 429, body)
    if kind.isdigit():
        status = 400 if kind == "422" else int(kind)
        return await _send(up, request, rec, status, error_body(status))
    return await up._guard(request, rec, {}, None)


async def _send(
    up: FakeUpstream, request: web.Request, rec: RecordedRequest, status: int, obj: dict[str, Any]
) -> web.StreamResponse:
    return await up._send(request, rec, status, obj)


async def _stream(
    up: FakeUpstream,
    request: web.Request,
    rec: RecordedRequest,
    events: list[dict[str, Any]],
    gap: float,
    cut: bool,
) -> web.StreamResponse:
    if cut:
        events = events[:2]
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    try:
        await resp.prepare(request)
        for i, event in enumerate(events):
            if i and gap and not await up._sleep(request, rec, gap):
                return resp
            if _gone(request):
                rec.gone()
                return resp
            rec.completed = not cut and i == len(events) - 1
            await resp.write(b"data: " + _dumps(event) + b"\r\n\r\n")  # Gemini ends events with CRLF CRLF
        if cut:
            _abort(request)
            return resp
        await resp.write_eof()
    except ConnectionResetError:
        rec.completed = False
        rec.gone()
    return resp


# -- checks, as Gemini makes them ----------------------------------------------------------------------


def invalid(body: dict[str, Any], model: str) -> str | None:
    """Gemini's 400 message for a request it would refuse, or None."""
    for name in body:
        if name not in _TOP:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: must be user or model"
        problem = _parts(content.get("parts"), f"contents[{i}]")
        if problem:
            return problem
    system = body.get("systemInstruction")
    if system is not None and (
        not isinstance(system, dict) or _parts(system.get("parts"), "systemInstruction")
    ):
        return "* GenerateContentRequest.systemInstruction: invalid"
    return _tools(body) or _generation(body) or _turns(contents, model)


def _parts(parts: Any, where: str) -> str | None:
    if not isinstance(parts, list) or not parts:
        return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
    for j, part in enumerate(parts):
        data = [k for k in _PART_DATA if isinstance(part, dict) and k in part]
        extra = (
            set(part) - set(_PART_DATA) - {"thoughtSignature", "thought"} if isinstance(part, dict) else set()
        )
        if len(data) != 1 or extra:
            return f"* GenerateContentRequest.{where}.parts[{j}]: a part holds exactly one kind of data"
        value = part[data[0]]
        if data[0] != "text" and not isinstance(value, dict):
            return f"* GenerateContentRequest.{where}.parts[{j}]: {data[0]} must be an object"
        if data[0] == "text" and (not isinstance(value, str) or not value):
            return "Unable to submit request because it has an empty text parameter."
        if data[0] == "functionCall" and not (isinstance(value.get("args", {}), dict) and value.get("name")):
            return f"* GenerateContentRequest.{where}.parts[{j}].function_call: name and object args required"
        if data[0] == "functionResponse" and not (
            isinstance(value.get("response"), dict) and value.get("name")
        ):
            return f"* GenerateContentRequest.{where}.parts[{j}].function_response: name and object response"
        if data[0] == "inlineData" and set(value) != {"mimeType", "data"}:
            return f"* GenerateContentRequest.{where}.parts[{j}].inline_data: mimeType and data required"
    return None


def schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"* {where}: a schema must be an object"
    for name in schema:
        if name not in _SCHEMA:
            return f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in _TYPES):
        return f"* {where}.type: invalid type {kind!r}"
    if "enum" in schema and not all(isinstance(v, str) for v in schema["enum"]):
        return f"* {where}.enum: enum values must be strings"
    subs = [(f"{where}.properties[{k}]", v) for k, v in (schema.get("properties") or {}).items()]
    subs += [(f"{where}.items", schema["items"])] if "items" in schema else []
    subs += [(f"{where}.any_of[{i}]", v) for i, v in enumerate(schema.get("anyOf") or [])]
    for spot, sub in subs:
        problem = schema_problem(sub, spot)
        if problem:
            return problem
    return None


def _tools(body: dict[str, Any]) -> str | None:
    names = []
    for i, tool in enumerate(body.get("tools") or []):
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            names.append(decl.get("name"))
            if "parameters" in decl and "parametersJsonSchema" in decl:
                return f"* {where}: parameters and parametersJsonSchema are mutually exclusive"
            params = decl.get("parameters")
            if params is not None:
                if str(params.get("type", "")).upper() == "OBJECT" and not params.get("properties"):
                    return f"* {where}.parameters.properties: should be non-empty for OBJECT type"
                problem = schema_problem(params, f"{where}.parameters")
                if problem:
                    return problem
    config = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if config is not None:
        if config.get("mode") not in ("AUTO", "ANY", "NONE"):
            return "* tool_config.function_calling_config.mode: must be AUTO, ANY or NONE"
        allowed = config.get("allowedFunctionNames")
        if allowed is not None and (config["mode"] != "ANY" or not set(allowed) <= set(names)):
            return (
                "* tool_config.function_calling_config.allowed_function_names: only with mode ANY, declared"
            )
    return None


def _generation(body: dict[str, Any]) -> str | None:
    config = body.get("generationConfig") or {}
    for name in config:
        if name not in _GENERATION:
            return f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config'."
    if "responseSchema" in config and "responseJsonSchema" in config:
        return "* generation_config: responseSchema and responseJsonSchema are mutually exclusive"
    has_schema = "responseSchema" in config or "responseJsonSchema" in config
    if has_schema and config.get("responseMimeType") != "application/json":
        return "* generation_config.response_mime_type: a schema needs application/json"
    if "responseSchema" in config:
        return schema_problem(config["responseSchema"], "generation_config.response_schema")
    return None


def _turns(contents: list[dict[str, Any]], model: str) -> str | None:
    """As many function responses as the model's turn before had calls; thought signatures kept."""
    for i, content in enumerate(contents):
        calls = [p for p in content["parts"] if "functionCall" in p]
        if content["role"] != "model" or not calls:
            continue
        if "think" in model and "thoughtSignature" not in calls[0]:
            return "Function call is missing a thought_signature in functionCall parts."
        answers = contents[i + 1]["parts"] if i + 1 < len(contents) else []
        got = sum(1 for p in answers if "functionResponse" in p)
        if i + 1 < len(contents) and got != len(calls):
            return (
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn."
            )
    return None


# -- answers -------------------------------------------------------------------------------------------


def _texts(parts: Any) -> list[str]:
    return [p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]


def example(schema: Any, text: str) -> Any:
    """A value matching a (Gemini or JSON) schema: strings are `text`, the first enum value, 42, 2.5, true."""
    if not isinstance(schema, dict):
        return text
    if schema.get("anyOf"):
        return example(schema["anyOf"][0], text)
    kind = str(schema.get("type", "")).upper()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        value = schema["enum"][0]
        return int(value) if kind == "INTEGER" else value
    if kind == "OBJECT" or "properties" in schema:
        return {k: example(v, text) for k, v in (schema.get("properties") or {}).items()}
    if kind == "ARRAY":
        return [example(schema.get("items"), text)]
    return {"INTEGER": 42, "NUMBER": 2.5, "BOOLEAN": True}.get(kind, text)


def _calls(body: dict[str, Any], text: str) -> list[dict[str, Any]]:
    decls = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = config.get("mode", "AUTO")
    if not decls or mode == "NONE":
        return []
    if mode == "ANY":
        allowed = config.get("allowedFunctionNames") or [d["name"] for d in decls]
        chosen = [d for d in decls if d["name"] in allowed]
    else:
        chosen = [d for d in decls if d["name"] in text]
    chosen = chosen if "parallel" in text else chosen[:1]
    return [
        {"name": d["name"], "args": example(d.get("parameters") or d.get("parametersJsonSchema") or {}, text)}
        for d in chosen
    ]


def answer_events(body: dict[str, Any], model: str, fault: str) -> list[dict[str, Any]]:
    """The stream events of the answer (the non-stream answer is their merge)."""
    contents = body["contents"]
    last = contents[-1]["parts"]
    text = " ".join(_texts(last))
    responses = [p["functionResponse"] for p in last if "functionResponse" in p]
    config = body.get("generationConfig") or {}
    calls = [] if responses else _calls(body, text)
    finish = "STOP"
    if responses:
        pieces = _words("Tool said: " + json.dumps(responses, sort_keys=True, ensure_ascii=False))
    elif calls:
        pieces = []
    elif config.get("responseMimeType") == "application/json":
        schema = (
            config.get("responseSchema") or config.get("responseJsonSchema") or {"properties": {"echo": {}}}
        )
        whole = json.dumps(example(schema, text), ensure_ascii=False)
        third = max(1, len(whole) // 3)
        pieces = [whole[:third], whole[third : 2 * third], whole[2 * third :]]
    else:
        pieces = _words("Echo: " + text)
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and limit < len(pieces):
            pieces, finish = pieces[:limit], "MAX_TOKENS"
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    base = {"modelVersion": model, "responseId": digest}
    prompt = sum(len(t.split()) for c in contents for t in _texts(c["parts"]))
    prompt += sum(len(t.split()) for t in _texts((body.get("systemInstruction") or {}).get("parts")))
    if fault == "blocked":
        return [
            {**base, "promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(model, prompt, 0)}
        ]
    parts: list[dict[str, Any]] = [{"text": p} for p in pieces]
    parts += [{"functionCall": c} for c in calls]
    if "think" in model and calls:
        parts[len(pieces)]["thoughtSignature"] = "sig-" + digest
    if fault == "empty":
        parts = []
    events = []
    for i, part in enumerate(parts or [None]):
        candidate: dict[str, Any] = {
            "content": {"role": "model", **({"parts": [part]} if part else {})},
            "index": 0,
        }
        if i == max(len(parts), 1) - 1:
            candidate["finishReason"] = finish
        event = {**base, "candidates": [candidate]}
        if fault != "nousage":
            event["usageMetadata"] = _usage(model, prompt, i + 1 if part else 0)
        events.append(event)
    if fault == "streamerror":
        events = [events[0], error_body(500)]
    return events


def _words(text: str) -> list[str]:
    words = text.split()
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def _usage(model: str, prompt: int, done: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": done}
    thoughts = 5 if "think" in model else 0
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if "cache" in model:
        usage["cachedContentTokenCount"] = min(prompt, 2)
    usage["totalTokenCount"] = prompt + done + thoughts
    return usage


def merge_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-stream answer: every event's parts in one candidate, the last event's finish and usage."""
    if "error" in events[-1]:
        return events[0]  # (a stream fault: a non-stream request just gets the answer)
    merged = {k: v for k, v in events[-1].items() if k != "candidates"}
    if "candidates" in events[-1]:
        parts = [p for e in events for p in e["candidates"][0]["content"].get("parts", [])]
        candidate = {**events[-1]["candidates"][0], "content": {"role": "model"}}
        if parts:
            candidate["content"]["parts"] = parts
        merged["candidates"] = [candidate]
    return merged
