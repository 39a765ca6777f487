"""A day's worth of fake traffic reconciled to the cent: many chat requests (stream and not, with cached
and reasoning tokens from the fake upstream) over models priced by the config (with cached and reasoning
prices), by the bundled table's layer below it, and by the provider's own OpenRouter-style list; the sum
of request_log.cost_usd equals the total computed here by hand from the prices and the usage each answer
reported, and every non-stream answer carries the same cost in `x-portway-cost-usd`."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import OPENROUTER_MODELS, FakeUpstream
from tests.integration.server import PortwayProcess

# USD per 1M tokens: (input, cached_input, output, reasoning); None: no price of its own.
PRICES: dict[str, tuple[float, float | None, float, float | None]] = {
    "p/big": (5.0, 1.25, 15.0, 60.0),
    "p/mid": (1.0, None, 3.0, None),  # cached at input, reasoning at output
    "p/tiny": (0.2, 0.05, 0.8, None),
    "or/vendor/vision-pro": (2.0, 0.5, 8.0, 10.0),  # from the provider's own list (per-token strings)
}
CONFIG_PRICES = {
    "p/big": {"input": 5.0, "cached_input": 1.25, "output": 15.0, "reasoning": 60.0},
    "p/mid": {"input": 1.0, "output": 3.0},
    "p/tiny": {"input": 0.2, "cached_input": 0.05, "output": 0.8},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    with FakeUpstream().start() as up, FakeUpstream().start() as router:
        router.models_data = OPENROUTER_MODELS
        config: dict[str, Any] = {
            "providers": {
                "p": {"type": "openai", "base_url": up.base_url, "api_keys": ["k-p"]},
                "or": {"type": "openai", "base_url": router.base_url, "api_keys": ["k-or"]},
            },
            "pricing": CONFIG_PRICES,
        }
        proc = PortwayProcess(tmp_path_factory.mktemp("reconcile"), config)
        yield proc
        proc.stop()


def _hand_cost(model: str, usage: dict[str, Any]) -> float:
    inp, cached_price, out, reasoning_price = PRICES[model]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    total = (prompt - cached) * inp + cached * (inp if cached_price is None else cached_price)
    total += (completion - reasoning) * out + reasoning * (
        out if reasoning_price is None else reasoning_price
    )
    return total / 1e6


def _wait_listed(gw: PortwayProcess, client: httpx.Client) -> None:
    until = time.monotonic() + 15
    while True:
        catalog = client.get("/v1/catalog", params={"provider": "or"}).json()
        if any(m["id"] == "or/vendor/vision-pro" and m["input"] == 2.0 for m in catalog["models"]["all"]):
            return
        assert time.monotonic() < until, "the provider's price list never arrived"
        time.sleep(0.05)


def _stream_usage(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    usage = None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and "x-portway-cost-usd" not in r.headers  # headers go before usage
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
    assert usage is not None
    return usage


def _rows(gw: PortwayProcess, n: int) -> list[sqlite3.Row]:
    until = time.monotonic() + 15
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM request_log WHERE endpoint = 'chat' ORDER BY ts").fetchall()
        finally:
            con.close()
        if len(rows) >= n:
            return rows
        assert time.monotonic() < until, f"{len(rows)} of {n} request_log rows"
        time.sleep(0.05)


def test_a_day_of_traffic_reconciles_to_the_cent(gw: PortwayProcess) -> None:
    client = httpx.Client(base_url=gw.url, headers=gw.headers(), timeout=20)
    _wait_listed(gw, client)
    models = list(PRICES)
    expected = 0.0
    n = 0
    for i in range(96):  # a request every 15 minutes of a day
        model = models[i % len(models)]
        words = " ".join(["word"] * (20 + 37 * i % 400))
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": words}]}
        if i % 3:
            body["fake_usage"] = {"cached_tokens": (i * 7) % 300, "reasoning_tokens": (i * 11) % 90}
        if i % 4 == 1:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            usage = _stream_usage(client, body)
        else:
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            header = float(r.headers["x-portway-cost-usd"])
            assert header == pytest.approx(_hand_cost(model, usage), abs=1e-8)
        expected += _hand_cost(model, usage)
        n += 1
    rows = _rows(gw, n)
    assert any(r["cached_tokens"] for r in rows) and any(r["reasoning_tokens"] for r in rows)
    assert not any(r["usage_estimated"] for r in rows)
    total = sum(r["cost_usd"] for r in rows)
    assert expected > 0.05  # enough traffic for a cent to matter
    assert round(total, 2) == round(expected, 2) and total == pytest.approx(expected, abs=1e-9)
