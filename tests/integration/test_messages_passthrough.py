"""/v1/messages to an Anthropic upstream: passed through untranslated, through the chat service."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

anthropic = pytest.importorskip("anthropic")
TOOL = {
    "name": "get_weather",
    "description": "w",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["providers"]["claude"] = {"type": "anthropic", "base_url": upstream.url, "api_keys": ["k-claude"]}
    cfg["providers"]["anth"] = {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-anth"]}
    cfg["models"]["claude-x"] = ["claude/claude-haiku-4-5"]
    cfg["models"]["mixed"] = ["claude/claude-haiku-4-5@500", "anth/fake-model"]
    cfg["pricing"] = {"claude/*": {"input": 1000.0, "output": 2000.0}}
    proc = PortwayProcess(tmp_path_factory.mktemp("pass"), cfg)
    yield proc
    proc.stop()


def _row(gw: PortwayProcess, rid: str) -> dict[str, Any]:
    for _ in range(200):
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM request_log WHERE request_id = ?", (rid,)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        con.close()
        if rows:
            return dict(rows[0])
        time.sleep(0.05)
    raise AssertionError(rid)


def test_passthrough_bytes_identical(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 50,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello there"}],
    }
    h = {"x-api-key": gw.master_key, "anthropic-version": "2023-06-01", "x-request-id": "pass-1"}
    via = httpx.post(gw.url + "/v1/messages", json=body, headers=h)
    assert via.status_code == 200, via.text
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.body == {**body, "model": "claude-haiku-4-5"}
    direct = httpx.post(
        upstream.url + "/v1/messages",
        json={**body, "model": "claude-haiku-4-5"},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert via.content == direct.content
    row = _row(gw, "pass-1")
    assert (
        row["provider"] == "claude"
        and row["prompt_tokens"] > 0
        and row["completion_tokens"] > 0
        and row["cost_usd"] > 0
    )


def test_passthrough_stream_with_tool(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.master_key, max_retries=0, timeout=20)
    pieces = []
    with client.messages.stream(
        model="claude-x",
        max_tokens=100,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Paris?"}],
        extra_headers={"x-request-id": "pass-2"},
    ) as s:
        for e in s:
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta":
                pieces.append(e.delta.partial_json)
        final = s.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris?"}
    assert len(pieces) > 1
    assert upstream.requests[-1].path == "/v1/messages" and upstream.requests[-1].body["stream"] is True
    row = _row(gw, "pass-2")
    assert row["stream"] == 1 and row["completion_tokens"] > 0 and not row["usage_estimated"]


def test_fallback_from_anthropic_to_chat_upstream_is_translated(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.master_key, max_retries=0, timeout=20)
    msg = client.messages.create(
        model="mixed", max_tokens=50, messages=[{"role": "user", "content": "hi you"}]
    )
    assert msg.content[0].text == "Echo: hi you"
    assert [r.path for r in upstream.requests][-1] == "/v1/chat/completions"
    assert "/v1/messages" in [r.path for r in upstream.requests]


def test_passthrough_stream_broken_mid_way(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.master_key, max_retries=0, timeout=20)
    upstream.script(["cut"], model="claude-haiku-4-5")
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(
            model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "one two three four five"}]
        ) as s,
    ):
        list(s.text_stream)
    assert "interrupted" in str(err.value.body)
