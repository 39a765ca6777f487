"""The llama.cpp grammar (GBNF) of an OutputPlan, built with llama-cpp-python's JSON-schema converter.

One grammar holds every shape the answer may take, so the model chooses while it samples (no second pass):

    root ::= call                                    a call is required (`required`, a named function)
    root ::= "call: " call | "message: " answer      `auto`: the model says which it does first
    root ::= answer                                  no tools: the response_format schema

`call` is the object `{"name": "<a tool>", "arguments": <that tool's parameters>}`; `answer` is the
response_format schema, or any text that does not begin with whitespace. The two labels of `auto` are
llama-cpp-python's `chatml-function-calling` idea: a small model asked to begin with one of two words
chooses between them far better than between `{` and any other token (SmolLM2-135M, which never opened
a bare `{` on its own, calls the weather tool for "weather in Paris?" and answers "Say hello." with a
message). The labels are stripped from what the client gets (toolcalls.CallDecoder).

Each schema's `$defs` move to the top level under a prefix of their own (`p0-Location`), and its `$ref`s
are rewritten to match: the converter names a referenced rule after the last segment of the reference, so
two tools with a `$defs/Location` each would otherwise share one rule.

llama-cpp-python installs a grammar llama.cpp fails to parse as a null sampler (a crash on the first token),
so every grammar is parsed once by llama.cpp first (`check`), and a failure is a 400.
"""

from __future__ import annotations

import importlib
from typing import Any

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local.structured import CALL_LABEL, MESSAGE_LABEL, OutputPlan

TEXT_ANSWER = r"[^ \t\r\n\x00] [^\x00]*"


def build(plan: OutputPlan, param: str) -> str:
    """The GBNF text of `plan`; a 400 naming `param` when the converter cannot express a schema."""
    # The local extra (loaded with the model); through Any, as the converter has no type annotations.
    converter: Any = importlib.import_module("llama_cpp.llama_grammar").SchemaConverter(
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        call = _call_rule(converter, plan) if plan.tools else None
        answer = None if plan.must_call else _answer_rule(converter, plan)
        if call is None:
            root = answer
        elif answer is None:
            root = call
        else:
            root = f'"{CALL_LABEL}" {call} | "{MESSAGE_LABEL}" {answer}'
        converter._add_rule("root", root)
        text: str = converter.format_grammar()
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UpstreamFailure(
            FailureKind.BAD_REQUEST,
            f"the local model cannot turn this JSON schema into a grammar ({str(exc) or type(exc).__name__})",
            status=400,
            error_code="unsupported_parameter",
            param=param,
        ) from exc
    return text


def _call_rule(converter: Any, plan: OutputPlan) -> str:
    defs: dict[str, Any] = {}
    calls = []
    for index, tool in enumerate(plan.tools):
        arguments = _relocate(tool.parameters, f"p{index}", f"/anyOf/{index}/properties/arguments", defs)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
            }
        )
    schema = converter.resolve_refs({"$defs": defs, "anyOf": calls}, "portway-call")
    rule: str = converter.visit(schema, "call")
    return rule


def _answer_rule(converter: Any, plan: OutputPlan) -> str:
    if plan.schema is None:
        text: str = converter._add_rule("text-answer", TEXT_ANSWER)
        return text
    defs: dict[str, Any] = {}
    body = _relocate(plan.schema, "answer", "/anyOf/0", defs)
    # Under an anyOf: the converter resolves no reference inside a node that is itself a $ref (pydantic's
    # schema of a recursive model is `{"$ref": "#/$defs/Tree", "$defs": ...}`).
    schema = converter.resolve_refs({"$defs": defs, "anyOf": [body]}, "portway-answer")
    rule: str = converter.visit(schema, "answer")
    return rule


def _relocate(schema: dict[str, Any], prefix: str, at: str, defs: dict[str, Any]) -> dict[str, Any]:
    """`schema` as placed at JSON pointer `at` of the combined schema, its definitions moved into `defs`."""
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            defs[f"{prefix}-{name}"] = _rewrite(sub, prefix, at)
    body = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    rewritten: dict[str, Any] = _rewrite(body, prefix, at)
    return rewritten


def _rewrite(node: Any, prefix: str, at: str) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, prefix, at) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = _target(value, prefix, at)
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _rewrite(sub, prefix, at) for name, sub in value.items()}  # names, not keywords
        else:
            out[key] = _rewrite(value, prefix, at)
    return out


def _target(ref: str, prefix: str, at: str) -> str:
    segments = ref[2:].split("/")
    if len(segments) >= 2 and segments[0] in ("$defs", "definitions"):
        return "/".join(["#", "$defs", f"{prefix}-{segments[1]}", *segments[2:]])
    return f"#{at}/{ref[2:]}"


def check(llm: Any, text: str, param: str) -> None:
    """Has llama.cpp parse `text` (cheap next to a generation) so a bad grammar is a 400, not a crash."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise UpstreamFailure(
            FailureKind.BAD_REQUEST,
            "the local model cannot build a grammar for this JSON schema",
            status=400,
            error_code="unsupported_parameter",
            param=param,
        )
    llama_cpp.llama_sampler_free(sampler)


def for_plan(llm: Any, plan: OutputPlan) -> Any:
    """The `LlamaGrammar` to sample `plan`'s answer with (blocking: call on the worker thread)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    param = "tools" if plan.tools else "response_format"
    text = build(plan, param)
    check(llm, text, param)
    return LlamaGrammar.from_string(text, verbose=False)
