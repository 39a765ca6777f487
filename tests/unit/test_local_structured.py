"""The local model's tools and structured output without the model: plans, schema checks, grammars, and the
reading of a generated answer into tool-call deltas."""

from __future__ import annotations

from typing import Any

import pytest

from portway.providers.base import UpstreamFailure
from portway.providers.local.params import build_request
from portway.providers.local.structured import ANY_JSON, ANY_VALUE, OutputPlan, check_schema, read_plan
from portway.providers.local.toolcalls import CallDecoder

MESSAGES = [{"role": "user", "content": "hi"}]
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def tool(name: str, parameters: Any = PARAMS) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def plan_of(**payload: Any) -> OutputPlan | None:
    return read_plan(payload)


# -- plans ---------------------------------------------------------------------------------------------------


def test_free_text_has_no_plan() -> None:
    assert plan_of() is None
    assert plan_of(tools=[tool("f")], tool_choice="none") is None
    assert plan_of(tool_choice="auto", response_format={"type": "text"}) is None


def test_tool_choices() -> None:
    tools = [tool("f"), tool("g")]
    auto = plan_of(tools=tools)
    assert auto is not None and auto.tool_names == {"f", "g"} and not auto.must_call
    required = plan_of(tools=tools, tool_choice="required")
    assert required is not None and required.must_call and required.tool_names == {"f", "g"}
    named = plan_of(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})
    assert named is not None and named.must_call and named.tool_names == {"g"}
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [tool("f")]}}
    subset = plan_of(tools=tools, tool_choice=allowed)
    assert subset is not None and subset.tool_names == {"f"} and not subset.must_call


def test_response_formats() -> None:
    assert plan_of(response_format={"type": "json_object"}) == OutputPlan(schema=ANY_JSON)
    with_schema = plan_of(response_format={"type": "json_object", "schema": PARAMS})
    assert with_schema is not None and with_schema.schema == PARAMS
    spec = {"name": "x", "schema": {**PARAMS, "title": "X", "description": "d"}, "strict": True}
    json_schema = plan_of(response_format={"type": "json_schema", "json_schema": spec})
    assert json_schema is not None and json_schema.schema == PARAMS  # annotations dropped


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    plan = plan_of(tools=[{"type": "function", "function": {"name": "now"}}])
    assert plan is not None and plan.tools[0].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"tools": [tool("f"), tool("f")]}, "tools[1].function.name", "validation_error"),
        ({"tools": [tool("bad name")]}, "tools[0].function.name", "validation_error"),
        ({"tools": {"f": 1}}, "tools", "validation_error"),
        ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0]", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "validation_error"),
        ({"tools": [tool("f")], "tool_choice": "sometimes"}, "tool_choice", "validation_error"),
        (
            {"tools": [tool("f", {"type": "object", "minProperties": 1})]},
            "tools[0].function.parameters",
            "unsupported_parameter",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "validation_error"),
        ({"response_format": {"type": "yaml"}}, "response_format", "validation_error"),
        (
            {"response_format": {"type": "json_object", "schema": {"$ref": "https://x.test/s.json"}}},
            "response_format.schema.$ref",
            "unsupported_parameter",
        ),
        (
            {"response_format": {"type": "json_object", "schema": {"type": "object", "required": ["a"]}}},
            "response_format.schema",
            "validation_error",
        ),
    ],
)
def test_malformed_or_unenforceable_is_a_400(payload: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        read_plan(payload)
    assert failure.value.status == 400
    assert (failure.value.param, failure.value.error_code) == (param, code)


def test_schema_normalisation() -> None:
    assert check_schema({"type": ["string", "null"], "maxLength": 3}, "p") == {
        "anyOf": [{"maxLength": 3, "type": "string"}, {"maxLength": 3, "type": "null"}]
    }
    assert check_schema({"description": "anything"}, "p") == ANY_VALUE
    assert check_schema({"type": "array", "maxItems": 2}, "p") == {
        "type": "array",
        "maxItems": 2,
        "items": ANY_VALUE,
    }
    nested = check_schema({"properties": {"title": {"type": "string", "title": "Title"}}}, "p")
    assert nested == {
        "properties": {"title": {"type": "string"}}
    }  # a property named like an annotation stays


# -- requests ------------------------------------------------------------------------------------------------


def test_plan_instructions_go_into_the_system_turn() -> None:
    request = build_request(
        {"messages": [{"role": "system", "content": "Be brief."}, *MESSAGES], "tools": [tool("f")]}, 256
    )
    assert request.plan is not None
    system = request.messages[0]
    assert system["role"] == "system" and system["content"].startswith(
        "Be brief.\n\nYou can call these functions:"
    )
    assert (
        '"name":"f"' in system["content"] and "To answer the user directly: 'message: '" in system["content"]
    )
    assert len(request.messages) == 2


def test_logprobs_and_stop() -> None:
    assert build_request({"messages": MESSAGES, "logprobs": True}, 256, logprobs=True).top_logprobs == 0
    request = build_request({"messages": MESSAGES, "logprobs": True, "top_logprobs": 5}, 256, logprobs=True)
    assert (
        request.top_logprobs == 5
        and request.sampling["logprobs"] is True
        and request.sampling["top_logprobs"] == 5
    )
    for payload, enabled, param in (
        ({"logprobs": True}, False, "logprobs"),  # the model was not loaded with logits for every token
        ({"logprobs": "yes"}, True, "logprobs"),
        ({"top_logprobs": 2}, True, "top_logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, True, "top_logprobs"),
        ({"logprobs": True, "tools": [tool("f")]}, True, "logprobs"),
        ({"response_format": {"type": "json_object"}, "stop": "}"}, True, "stop"),
    ):
        with pytest.raises(UpstreamFailure) as failure:
            build_request({"messages": MESSAGES, **payload}, 256, logprobs=enabled)
        assert failure.value.param == param


# -- reading the generated text ------------------------------------------------------------------------------


def feed_all(
    decoder: CallDecoder, pieces: list[str], finish_reason: str = "stop"
) -> tuple[list[dict[str, Any]], str]:
    deltas = [delta for piece in pieces for delta in decoder.feed(piece)]
    last, reason = decoder.finish(finish_reason)
    return deltas + last, reason


def arguments_of(deltas: list[dict[str, Any]]) -> str:
    return "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)


def test_a_streamed_call() -> None:
    plan = OutputPlan(tools=read_plan({"tools": [tool("get_weather")]}).tools)  # type: ignore[union-attr]
    decoder = CallDecoder(plan)
    text = 'call: {"name": "get_weather", "arguments": {"city": "Pa", "nested": {"x": {}}} }'
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    deltas, reason = feed_all(decoder, pieces)
    assert reason == "tool_calls" and decoder.is_call and decoder.content is None
    head = deltas[0]["tool_calls"][0]
    assert head == {
        "index": 0,
        "id": decoder.id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert arguments_of(deltas) == decoder.arguments == '{"city": "Pa", "nested": {"x": {}}}'
    assert len(deltas) > 5


def test_text_in_auto_mode() -> None:
    plan = OutputPlan(tools=read_plan({"tools": [tool("f")]}).tools)  # type: ignore[union-attr]
    decoder = CallDecoder(plan)
    deltas, reason = feed_all(decoder, ["mess", "age: ", " Hel", "lo {there}"])
    assert deltas == [{"content": "Hel"}, {"content": "lo {there}"}] and reason == "stop"
    assert not decoder.is_call and decoder.content == "Hello {there}"


def test_a_call_cut_by_length() -> None:
    plan = OutputPlan(tools=read_plan({"tools": [tool("f")]}).tools, must_call=True)  # type: ignore[union-attr]
    decoder = CallDecoder(plan)
    deltas, reason = feed_all(decoder, ['{"name": "f", "arguments": {"city": "Pa'], "length")
    assert reason == "length" and arguments_of(deltas) == '{"city": "Pa'
    whole = CallDecoder(plan)
    deltas, reason = feed_all(whole, ['{"name": "f", "arguments": {"city": "P"}}'], "length")
    assert reason == "tool_calls" and arguments_of(deltas) == '{"city": "P"}'


def test_a_call_or_json_answer_on_auto() -> None:
    plan = OutputPlan(tools=read_plan({"tools": [tool("f")]}).tools, schema=ANY_JSON)  # type: ignore[union-attr]
    call = CallDecoder(plan)
    deltas, reason = feed_all(call, ['call: {"name": "f", ', '"arguments": {"city": "P"}}'])
    assert reason == "tool_calls" and arguments_of(deltas) == '{"city": "P"}'
    answer = CallDecoder(plan)
    deltas, reason = feed_all(answer, ['message: {"city": ', '"P"} '])
    assert deltas == [{"content": '{"city": '}, {"content": '"P"} '}] and reason == "stop"
    assert not answer.is_call


def test_cut_before_the_label_is_complete() -> None:
    plan = OutputPlan(tools=read_plan({"tools": [tool("f")]}).tools)  # type: ignore[union-attr]
    decoder = CallDecoder(plan)
    assert feed_all(decoder, ["cal"], "length") == ([], "length")
    assert decoder.content is None and not decoder.is_call


# -- grammars (llama-cpp-python's converter; no model needed) -----------------------------------------------


def test_grammar_of_two_tools_with_their_own_defs() -> None:
    pytest.importorskip("llama_cpp")
    from portway.providers.local.grammar import build

    def with_defs(kind: str) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"where": {"$ref": "#/$defs/Place"}},
            "required": ["where"],
            "$defs": {"Place": {"type": "object", "properties": {"x": {"type": kind}}, "required": ["x"]}},
        }

    plan = read_plan({"tools": [tool("a", with_defs("string")), tool("b", with_defs("integer"))]})
    assert plan is not None
    text = build(plan, "tools")
    rules = dict(line.split(" ::= ", 1) for line in text.splitlines())
    assert rules["root"] == '"call: " call | "message: " text-answer'
    assert rules["p0-Place"] != rules["p1-Place"]  # each tool's Place is its own rule
    assert '"\\"a\\""' in text and '"\\"b\\""' in text
