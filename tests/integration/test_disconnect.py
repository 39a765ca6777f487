"""A non-stream request whose client hangs up: the upstream call is cancelled at once, its slots are freed,
and it is recorded (and charged) as a 499 with its prompt. Under portway's server protocol (the
`portway.on_disconnect` callback) and under uvicorn's httptools protocol (a watcher task)."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream, RecordedRequest
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
MSGS = [{"role": "user", "content": "ping"}]


def raw_request(port: int, key: str, body: dict[str, Any], request_id: str) -> socket.socket:
    payload = orjson.dumps(body)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nx-request-id: {request_id}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head.encode() + payload)
    return sock


def wait_row(db: Path, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request's row, once the batched writer has flushed it."""
    until = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(db)
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM request_log WHERE request_id = ?", (request_id,)).fetchone()
        except sqlite3.OperationalError:  # the table is created at start; the file may be that young
            row = None
        finally:
            con.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < until, f"no request_log row for {request_id}"
        time.sleep(0.02)


def budget_used(gw: PortwayProcess, key: str) -> float:
    me = HTTP.get(gw.base_url + "/me", headers={"Authorization": f"Bearer {key}"}).json()
    found = [u for u in _usages(me) if u["kind"] == "budget"]
    assert found, me
    used: float = found[0]["used"]
    return used


def _usages(obj: Any) -> Iterator[dict[str, Any]]:
    """Every limit-usage entry in the /v1/me answer, wherever it sits."""
    if isinstance(obj, dict):
        if "kind" in obj and "used" in obj:
            yield obj
        for value in obj.values():
            yield from _usages(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _usages(value)


@pytest.fixture(params=["portway", "httptools"])
def gw(request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["routing"]["deadline"] = 30  # a hung upstream would hold everything far longer than this test
    cfg["server"]["max_in_flight"] = 1  # a request slot that is not given back refuses the next request
    cfg["providers"]["pair"] = {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-p1", "k-p2"]}
    cfg["pricing"] = {"pair/*": {"input": 1000.0, "output": 1000.0}}  # $0.001 a token
    proc = PortwayProcess(tmp_path, cfg, env={"PORTWAY_HTTP": request.param})
    yield proc
    proc.stop()


def test_non_stream_disconnect_cancels_upstream_frees_slots_and_records_499(
    gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    r = HTTP.post(gw.url + "/admin/keys", json={"name": "d", "budget_usd": 10}, headers=gw.headers())
    key = r.json()["key"]
    body = {"model": "pair/fake-model@hang", "messages": MSGS, "max_tokens": 5}
    sock = raw_request(gw.port, key, body, "gone-1")
    assert upstream.wait_for(lambda rs: any(r.model == "fake-model@hang" for r in rs))
    hung = next(r for r in upstream.requests if r.model == "fake-model@hang")
    time.sleep(0.2)  # the upstream call is well under way, as a client that gives up would find it
    left = time.monotonic()
    sock.close()

    assert upstream.wait_for(lambda _: hung.disconnected_at is not None, timeout=3)
    assert hung.disconnected_at is not None
    assert hung.disconnected_at - left < 0.1, "the upstream connection outlived the client by too much"

    row = wait_row(gw.data_dir / "portway.db", "gone-1")
    assert row["status"] == 499 and row["error_code"] == "client_disconnected"
    assert row["usage_estimated"] == 1 and row["prompt_tokens"] > 0 and row["completion_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * 0.001)
    # The reservation was settled with the prompt, not released to nothing.
    assert budget_used(gw, key) == pytest.approx(row["cost_usd"])

    # The request's in-flight slot (max_in_flight 1) and its key's in-flight count are free again: with
    # the hung key still counted busy, least-in-flight would send every later request to the other key.
    upstream.reset()
    for _ in range(4):
        ok = HTTP.post(
            gw.base_url + "/chat/completions",
            json={"model": "pair/fake-model", "messages": MSGS},
            headers=gw.headers(),
        )
        assert ok.status_code == 200, ok.text
    keys = {r.key for r in upstream.requests if isinstance(r, RecordedRequest)}
    assert keys == {"k-p1", "k-p2"}
