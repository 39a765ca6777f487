"""JSON Schema (as chat completions clients write it) -> Gemini's Schema, pure and golden-tested.

Gemini's `parameters` and `responseSchema` take "a select subset of an OpenAPI 3.0 schema object": `type`
(STRING, NUMBER, INTEGER, BOOLEAN, ARRAY, OBJECT), `format`, `title`, `description`, `nullable`, `enum`
(strings), `items`, `properties`, `required`, `propertyOrdering`, `anyOf`, `minimum` / `maximum`, the
min / max lengths, items and properties, `pattern`, `default` and `example`. An unknown keyword is a 400
("Invalid JSON payload received. Unknown name ..."), so everything else is dropped after what it means has
been carried over where Gemini can say it:

- `$ref` to `$defs` / `definitions` is inlined (a reference back into itself, which has no inline form,
  ends as a bare OBJECT);
- `type: [T, "null"]`, `anyOf` / `oneOf` with a null branch and `enum` with null -> `nullable`;
- `oneOf` -> `anyOf`; `allOf` is merged into one schema; `const` -> a one-value `enum`;
- integer / number enums -> string enums with `format: enum` (Gemini's documented form);
- `format` is kept only where Gemini supports it (date-time and enum on strings, float / double,
  int32 / int64);
- a function with no parameters gets no `parameters`, a free-form object answer no `responseSchema` (an
  OBJECT without properties is rejected; JSON mode alone asks for any object);
- `propertyOrdering` keeps the client's property order (Gemini otherwise orders them by name).

Dropped: `additionalProperties`, `$schema`, `$id`, `$comment`, `examples`, `strict`, `patternProperties`,
`exclusiveMinimum` / `exclusiveMaximum`, `multipleOf`, `uniqueItems`, `not`, `if` / `then` / `else`,
`prefixItems`, `contains`, `readOnly` / `writeOnly`, `deprecated` and any other keyword.

With `schemas: json_schema` the client's schema is sent untouched (`parametersJsonSchema`,
`responseJsonSchema`: Gemini 2.5 and later read JSON Schema themselves), only `$schema` removed.
"""

from __future__ import annotations

from typing import Any, Literal

SchemaMode = Literal["translate", "json_schema"]
Json = dict[str, Any]

_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_COPIED = ("title", "description", "pattern", "default", "example")
_NUMBERS = ("minimum", "maximum")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_FORMATS = {"STRING": {"date-time", "enum"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}
_MAX_DEPTH = 32  # nesting beyond this is cut (Gemini itself refuses deeply nested schemas)


def function_declaration(fn: Json, mode: SchemaMode) -> Json:
    """A chat completions `function` tool as a Gemini FunctionDeclaration."""
    out: Json = {"name": fn["name"]}
    if isinstance(fn.get("description"), str) and fn["description"]:
        out["description"] = fn["description"]
    params = fn.get("parameters")
    if not isinstance(params, dict):
        return out
    if mode == "json_schema":
        out["parametersJsonSchema"] = _untouched(params)
        return out
    schema = to_gemini(params)
    if schema.get("properties"):  # Gemini rejects an OBJECT without properties: no parameters at all
        out["parameters"] = schema
    return out


def response_schema(schema: Json, mode: SchemaMode) -> Json:
    """The generationConfig fields for a response_format json_schema."""
    if mode == "json_schema":
        return {"responseJsonSchema": _untouched(schema)}
    translated = to_gemini(schema)
    if translated.get("type") == "OBJECT" and not translated.get("properties"):
        return {}  # any object: Gemini refuses an OBJECT without properties, and JSON mode alone is that
    return {"responseSchema": translated}


def _untouched(schema: Json) -> Json:
    return {k: v for k, v in schema.items() if k != "$schema"}


def to_gemini(schema: Any) -> Json:
    """Gemini's Schema for a JSON Schema (`$defs` / `definitions` of the root resolve its `$ref`s)."""
    if not isinstance(schema, dict):
        return {}
    defs: Json = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _convert(schema, defs, 0)


def _resolve(schema: Json, defs: Json, refs: frozenset[str]) -> tuple[Json, frozenset[str]] | None:
    """The schema with its `$ref` inlined and `allOf` merged, and the references inlined on the way here;
    None when a `$ref` leads nowhere or back into itself (a recursive schema has no inline form)."""
    while isinstance(schema.get("$ref"), str):
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name)
        if not isinstance(target, dict) or name in refs:
            return None
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}  # a sibling (say a description) overrides the definition's
        refs = refs | {name}
    subs = schema.get("allOf")
    if isinstance(subs, list) and subs:
        merged: Json = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in subs:
            found = _resolve(sub, defs, refs) if isinstance(sub, dict) else None
            if found is not None:
                merged = _merge(merged, found[0])
        schema = merged
    return schema, refs


def _merge(into: Json, sub: Json) -> Json:
    out = {**sub, **into}  # what the schema says itself wins over its parts
    props = [p for p in (into.get("properties"), sub.get("properties")) if isinstance(p, dict)]
    if props:
        merged: Json = {}
        for p in props:  # in the order written; a property the schema defines itself wins
            for k, v in p.items():
                merged.setdefault(k, v)
        out["properties"] = merged
    required = [r for s in (into, sub) if isinstance(s.get("required"), list) for r in s["required"]]
    if required:
        out["required"] = list(dict.fromkeys(required))
    return out


def _convert(raw: Json, defs: Json, depth: int, refs: frozenset[str] = frozenset()) -> Json:
    found = _resolve(raw, defs, refs)
    if found is None or depth > _MAX_DEPTH:
        return {"type": "OBJECT"}
    schema, refs = found
    out: Json = {}
    nullable = False
    branches = schema.get("anyOf") if isinstance(schema.get("anyOf"), list) else schema.get("oneOf")
    if isinstance(branches, list) and branches:
        kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
        nullable = len(kept) < len(branches)
        if len(kept) == 1 and isinstance(kept[0], dict):  # `X or null`: X itself, nullable
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            inner = _convert(_merge(rest, kept[0]), defs, depth + 1, refs)
            return {**inner, "nullable": True} if nullable else inner
        out["anyOf"] = [_convert(b, defs, depth + 1, refs) for b in kept if isinstance(b, dict)]
    nullable = _type(schema, out) or nullable
    _enum(schema, out)
    if nullable or (isinstance(schema.get("enum"), list) and None in schema["enum"]):
        out["nullable"] = True
    _children(schema, defs, depth, refs, out)
    for key in _COPIED:
        if key in schema:
            out[key] = schema[key]
    for key in _NUMBERS:
        if isinstance(schema.get(key), int | float) and not isinstance(schema[key], bool):
            out[key] = schema[key]
    for key in _COUNTS:
        if isinstance(schema.get(key), int) and not isinstance(schema[key], bool):
            out[key] = schema[key]
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out.setdefault("format", fmt)
    return out


def _type(schema: Json, out: Json) -> bool:
    """Sets `type` (or an `anyOf` of types); True when null is one of them."""
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared] if isinstance(declared, str) else []
    nullable = "null" in types
    named = [t for t in types if t in _TYPES]
    if len(named) == 1:
        out["type"] = named[0].upper()
    elif len(named) > 1 and "anyOf" not in out:
        out["anyOf"] = [{"type": t.upper()} for t in named]
    elif not named and "anyOf" not in out:
        if isinstance(schema.get("properties"), dict):
            out["type"] = "OBJECT"
        elif "items" in schema:
            out["type"] = "ARRAY"
        elif "enum" in schema or "const" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            values = [v for v in values if v is not None] if isinstance(values, list) else []
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                out["type"] = "INTEGER"
            elif values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                out["type"] = "NUMBER"
            else:
                out["type"] = "STRING"
    return nullable


def _enum(schema: Json, out: Json) -> None:
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if not isinstance(values, list):
        return
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        out["enum"] = values
        if "type" not in out:
            out["type"] = "STRING"
    elif values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        out["enum"] = [str(v) for v in values]  # Gemini's form for numeric enums: strings, format enum
        out["format"] = "enum"


def _children(schema: Json, defs: Json, depth: int, refs: frozenset[str], out: Json) -> None:
    props = schema.get("properties")
    if isinstance(props, dict):
        out["properties"] = {
            name: _convert(sub if isinstance(sub, dict) else {}, defs, depth + 1, refs)
            for name, sub in props.items()
        }
        required = schema.get("required")
        if isinstance(required, list):
            names = [r for r in required if isinstance(r, str) and r in props]
            if names:
                out["required"] = names
        if len(props) > 1:
            out["propertyOrdering"] = list(props)
    items = schema.get("items")
    if isinstance(items, list):  # the tuple form: Gemini has one schema for all items
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = _convert(items, defs, depth + 1, refs)
