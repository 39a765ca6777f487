"""Usage the upstream never reported is estimated and charged, so a budget cannot be escaped by a stream
whose client hangs up before the usage chunk, a stream the upstream cuts, a provider with
`stream_usage: false`, or a non-stream answer without usage. Each runs through a running portway with a
pricing table and a $0.20 budget, one request after another, so only settled spend can refuse."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess
from tests.integration.test_disconnect import budget_used

MSGS = [{"role": "user", "content": "tell me a story about a cat"}]
BUDGET = 0.20


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["providers"]["bud"] = {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-bud"]}
    cfg["providers"]["nousage"] = {
        "type": "openai",
        "base_url": upstream.base_url,
        "api_keys": ["k-nousage"],
        "stream_usage": False,
    }
    # $0.001 a token: each answer costs a few cents, so a $0.20 budget lasts for a handful of them.
    cfg["pricing"] = {
        "bud/*": {"input": 1000.0, "output": 1000.0},
        "nousage/*": {"input": 1000.0, "output": 1000.0},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("budget"), cfg)
    yield proc
    proc.stop()


def new_key(gw: PortwayProcess) -> tuple[str, str]:
    r = httpx.post(
        gw.url + "/admin/keys",
        json={"name": "b", "budget_usd": BUDGET, "budget_period": "total"},
        headers=gw.headers(),
    )
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


def status_of(response_head: bytes) -> int:
    return int(response_head.split(b" ", 2)[1])


def stream_then_hang_up(gw: PortwayProcess, key: str, model: str) -> int:
    """A raw client that reads the answer's first words and leaves before the usage chunk."""
    body = orjson.dumps({"model": model, "messages": MSGS, "stream": True, "max_tokens": 8})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        got = b""
        while b"\r\n\r\n" not in got or (status_of(got) == 200 and b"Echo" not in got):
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        return status_of(got)


def stream(gw: PortwayProcess, key: str, model: str) -> int:
    body = {"model": model, "messages": MSGS, "stream": True, "max_tokens": 8}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    if r.status_code == 200:
        assert r.text.rstrip().endswith(("data: [DONE]", "}")), r.text
    return r.status_code


def plain(gw: PortwayProcess, key: str, model: str) -> int:
    body = {"model": model, "messages": MSGS, "max_tokens": 8}
    r = httpx.post(gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    if r.status_code == 429:
        assert r.json()["error"]["code"] == "budget_exceeded"
    return r.status_code


def rows_of(gw: PortwayProcess, key_id: str, n: int) -> list[dict[str, Any]]:
    """The key's answered (not refused) rows, once the writer has flushed all n of them."""
    until = time.monotonic() + 5
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        rows = [
            dict(r)
            for r in con.execute(
                "SELECT * FROM request_log WHERE principal = ? AND status != 429", (f"key:{key_id}",)
            )
        ]
        con.close()
        if len(rows) >= n:
            return rows
        assert time.monotonic() < until, rows
        time.sleep(0.02)


CASES: dict[str, tuple[Callable[[PortwayProcess, str, str], int], str, int]] = {
    # (client, model, the status its rows are recorded with)
    "client_hangs_up_before_usage": (stream_then_hang_up, "bud/fake-model@slowchunks:0.05", 499),
    "upstream_cuts_the_stream": (stream, "bud/fake-model@cut", 502),
    "provider_without_stream_usage": (stream, "nousage/fake-model", 200),
    "non_stream_answer_without_usage": (plain, "bud/fake-model@nousage", 200),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unreported_usage_is_estimated_and_charged(gw: PortwayProcess, case: str) -> None:
    client, model, recorded = CASES[case]
    key, key_id = new_key(gw)
    statuses = []
    for _ in range(20):
        statuses.append(client(gw, key, model))
        if statuses[-1] == 429:
            break
    answered = len(statuses) - 1
    assert statuses[-1] == 429, f"20 answers passed a ${BUDGET} budget: {statuses}"
    assert 1 <= answered < 20 and set(statuses[:-1]) == {200}

    rows = rows_of(gw, key_id, answered)
    assert {r["status"] for r in rows} == {recorded}
    assert all(r["usage_estimated"] == 1 for r in rows)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["cost_usd"] > 0 for r in rows)
    spent = sum(r["cost_usd"] for r in rows)
    assert budget_used(gw, key) == pytest.approx(spent)
    assert spent <= BUDGET + 1e-9  # one request after another: the reservation covers what is charged


def test_reported_usage_is_not_marked_estimated(gw: PortwayProcess) -> None:
    key, key_id = new_key(gw)
    assert stream(gw, key, "bud/fake-model") == 200
    assert plain(gw, key, "bud/fake-model") == 200
    rows = rows_of(gw, key_id, 2)
    assert [r["usage_estimated"] for r in rows] == [0, 0]
    assert all(r["completion_tokens"] > 0 for r in rows)
