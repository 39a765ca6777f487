"""Tools and structured output for the local model: what the answer must be, read from an OpenAI request.

An `OutputPlan` says which shapes the answer may take: a call of one of `tools` (as the JSON object
`{"name": <tool>, "arguments": <its parameters>}`), a text answer, or a JSON answer matching `schema`.
`grammar.py` turns it into a llama.cpp grammar, so whatever the model samples parses and matches; the plan
is also described to the model in a system turn (`instructions`), or it would not know what to fill in.

JSON schemas are checked here against what the grammar can enforce: a keyword the grammar would silently
ignore (`minimum`, `uniqueItems`, `format: email`...) is refused with a 400 rather than answered with JSON
that may not validate. Annotations (`title`, `description`, `default`...) are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from portway.providers.base import FailureKind, UpstreamFailure

# What an answer on tool_choice `auto` begins with: the model says whether it calls or answers (grammar.py).
CALL_LABEL = "call: "
MESSAGE_LABEL = "message: "
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ANY_JSON: dict[str, Any] = {"type": "object"}  # json_object without a schema: any JSON object
# `{}` (anything) inside a schema; spelled out, as the grammar builder reads `{}` as "any object".
ANY_VALUE: dict[str, Any] = {
    "anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean", "null")]
}

# Keywords the grammar enforces, and annotations that constrain nothing.
_ENFORCED = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems"}
    | {"enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "minLength", "maxLength", "pattern"}
    | {"format"}
)
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated"}
    | {"readOnly", "writeOnly", "discriminator"}
)
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # checked and normalised (see `check_schema`)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """`tools`: what may be called (empty: nothing); `must_call`: a call is the only answer allowed;
    `schema`: a text answer must be JSON matching it (None: free text, `ANY_JSON`: any JSON object)."""

    tools: tuple[ToolSpec, ...] = ()
    must_call: bool = False
    schema: dict[str, Any] | None = None

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)


def _bad(message: str, param: str, code: str = "validation_error") -> NoReturn:
    raise UpstreamFailure(FailureKind.BAD_REQUEST, message, status=400, error_code=code, param=param)


def read_plan(payload: dict[str, Any]) -> OutputPlan | None:
    """The plan of a request, or None when the answer is free text (the common, unconstrained case)."""
    tools = _tools(payload.get("tools"))
    offered, must_call = _tool_choice(payload.get("tool_choice"), tools)
    schema = _response_format(payload.get("response_format"))
    if not offered and schema is None:
        return None
    return OutputPlan(offered, must_call, schema)


def _tools(raw: Any) -> dict[str, ToolSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        _bad("tools must be an array", "tools")
    tools: dict[str, ToolSpec] = {}
    for index, tool in enumerate(raw):
        param = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            _bad("the local model calls function tools only", param, "unsupported_parameter")
        function = tool.get("function")
        if not isinstance(function, dict):
            _bad("a function tool needs a function object", f"{param}.function")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            _bad("a function name is 1 to 64 letters, digits, _ or -", f"{param}.function.name")
        if name in tools:
            _bad(f"two tools are named {name!r}", f"{param}.function.name")
        description = function.get("description") or ""
        if not isinstance(description, str):
            _bad("a function description must be a string", f"{param}.function.description")
        parameters = function.get("parameters")
        if parameters is None or parameters == {}:  # OpenAI: then it takes an empty object
            parameters = {"type": "object", "properties": {}}
        checked = check_schema(parameters, f"{param}.function.parameters")
        tools[name] = ToolSpec(name, description, checked)
    return tools


def _tool_choice(raw: Any, tools: dict[str, ToolSpec]) -> tuple[tuple[ToolSpec, ...], bool]:
    """(the tools the answer may call, whether it must call one)."""
    if raw is None or raw == "auto":
        return tuple(tools.values()), False
    if raw == "none":
        return (), False
    if not tools:
        _bad("tool_choice other than 'none' or 'auto' needs tools", "tool_choice")
    if raw == "required":
        return tuple(tools.values()), True
    if isinstance(raw, dict) and raw.get("type") == "function":
        return (_named(raw.get("function"), tools, "tool_choice.function"),), True
    if isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        allowed = raw.get("allowed_tools")
        if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required"):
            _bad("allowed_tools needs a mode of 'auto' or 'required'", "tool_choice.allowed_tools")
        listed = allowed.get("tools")
        if not isinstance(listed, list) or not listed:
            _bad("allowed_tools needs a non-empty tools array", "tool_choice.allowed_tools.tools")
        chosen = {}
        for index, item in enumerate(listed):
            param = f"tool_choice.allowed_tools.tools[{index}]"
            if not isinstance(item, dict) or item.get("type") != "function":
                _bad("allowed tools are function tools", param)
            tool = _named(item.get("function"), tools, f"{param}.function")
            chosen[tool.name] = tool
        return tuple(chosen.values()), allowed["mode"] == "required"
    _bad("tool_choice must be 'none', 'auto', 'required' or name a function", "tool_choice")


def _named(function: Any, tools: dict[str, ToolSpec], param: str) -> ToolSpec:
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or name not in tools:
        _bad(f"tool_choice names {name!r}, which is not among tools", param)
    return tools[name]


def _response_format(raw: Any) -> dict[str, Any] | None:
    """`text`: None; `json_object`: any JSON object, or llama-cpp-python's `schema` extension;
    `json_schema`: its `json_schema.schema` (without one: any JSON object)."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = raw.get("schema")
        return ANY_JSON if schema is None else check_schema(schema, "response_format.schema")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            _bad("json_schema needs a name", "response_format.json_schema")
        schema = spec.get("schema")
        return ANY_JSON if schema is None else check_schema(schema, "response_format.json_schema.schema")
    _bad(f"response_format type {kind!r} is not text, json_object or json_schema", "response_format")


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """The schema without annotations, with `type: [a, b]` spelled as anyOf (the grammar builder would
    drop the other keywords otherwise); a 400 naming `param` for what the grammar cannot enforce."""
    if schema is True:
        return dict(ANY_VALUE)
    if not isinstance(schema, dict):
        _bad("a JSON schema must be an object", param)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            _bad(
                f"the local model cannot enforce the JSON schema keyword {key!r}",
                param,
                "unsupported_parameter",
            )
        out[key] = _check_keyword(key, value, param)
    if not out:
        return dict(ANY_VALUE)
    if ("minItems" in out or "maxItems" in out) and "items" not in out and "prefixItems" not in out:
        out["items"] = dict(ANY_VALUE)  # the grammar builder applies the bounds only with items
    for name in out.get("required", ()):
        if name not in out.get("properties", {}):
            _bad(f"required property {name!r} is not in properties", param)
    if isinstance(out.get("type"), list):
        types, rest = out.pop("type"), out
        if not types:
            _bad("type must not be an empty array", param)
        return {"anyOf": [{**rest, "type": kind} for kind in types]}
    return out


def _check_keyword(key: str, value: Any, param: str) -> Any:
    here = f"{param}.{key}"
    if key in ("properties", "$defs", "definitions"):
        if not isinstance(value, dict):
            _bad(f"{key} must be an object", here)
        return {name: check_schema(sub, f"{here}.{name}") for name, sub in value.items()}
    if key in ("anyOf", "oneOf", "prefixItems"):
        if not isinstance(value, list) or not value:
            _bad(f"{key} must be a non-empty array", here)
        return [check_schema(sub, f"{here}[{i}]") for i, sub in enumerate(value)]
    if key in ("items", "additionalProperties"):
        return value if isinstance(value, bool) else check_schema(value, here)
    if key == "type":
        kinds = value if isinstance(value, list) else [value]
        if not all(isinstance(kind, str) and kind in _TYPES for kind in kinds):
            _bad(f"unknown type {value!r}", here)
        return value
    if key == "required" and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
        _bad("required must be an array of property names", here)
    if key == "format" and value not in _FORMATS:
        _bad(f"the local model cannot enforce format {value!r}", here, "unsupported_parameter")
    if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
        _bad("only local $refs (#/...) are supported", here, "unsupported_parameter")
    if key == "enum" and not (isinstance(value, list) and value):
        _bad("enum must be a non-empty array", here)
    if key in ("minItems", "maxItems", "minLength", "maxLength") and (
        isinstance(value, bool) or not isinstance(value, int) or value < 0
    ):
        _bad(f"{key} must be a non-negative integer", here)
    if key == "pattern" and not isinstance(value, str):
        _bad("pattern must be a string", here)
    return value


def instructions(plan: OutputPlan) -> str:
    """The system text that tells the model what the grammar will hold it to."""
    answer = None
    if plan.schema == ANY_JSON:
        answer = "a JSON object"
    elif plan.schema is not None:
        answer = "JSON matching this JSON schema: " + orjson.dumps(plan.schema).decode()
    if not plan.tools:
        return f"Answer with {answer}."
    listed = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in plan.tools]
    call = 'the JSON object {"name": <function name>, "arguments": <the arguments object>}'
    lines = ["You can call these functions:", orjson.dumps(listed).decode()]
    if plan.must_call:
        lines.append(f"Call one of them: reply with only {call}.")
    else:  # the labels the grammar makes the model begin with (grammar.py)
        lines.append(f"Reply in one of two ways. To call a function: '{CALL_LABEL}' and {call}.")
        lines.append(f"To answer the user directly: '{MESSAGE_LABEL}' and {answer or 'your answer'}.")
    return "\n".join(lines)
