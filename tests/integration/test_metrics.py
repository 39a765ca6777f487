"""GET /metrics on a real two-worker portway (prometheus-client's multiprocess mode), scraped and parsed with
prometheus-client's own parser; the open_on address rule through the in-process app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from portway.app import create_asgi
from portway.config import parse_config
from portway.settings import Settings
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import MASTER_KEY, PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

MSGS = [{"role": "user", "content": "count my tokens please"}]


def _config(up: FakeUpstream) -> dict[str, Any]:
    prov = {"type": "openai", "base_url": up.base_url, "api_keys": ["k-metrics"]}
    return {
        "routing": {"deadline": 4, "backoff_base": 0.01, "backoff_max": 0.02, "breaker_threshold": 50},
        "providers": {"mx": prov},
        "models": {"metered": ["mx/fake-model"]},
        "pricing": {"mx/fake-model": {"input": 1.0, "output": 2.0}},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    work = tmp_path_factory.mktemp("metrics")
    # What `portway serve --workers 2` sets up (telemetry.prepare_multiprocess), given explicitly here.
    multiproc = work / "prom"
    multiproc.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    proc = PortwayProcess(work, _config(upstream), env=env, workers=2)
    yield proc
    proc.stop()


def _scrape(gw: PortwayProcess) -> dict[str, Any]:
    resp = HTTP.get(gw.url + "/metrics", headers=gw.headers(), timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def _value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for s in families[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _chat(gw: PortwayProcess, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MSGS, **extra}
    return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers(), timeout=20)


def test_metrics_needs_the_admin_key(gw: PortwayProcess) -> None:
    assert HTTP.get(gw.url + "/metrics", timeout=10).status_code == 401
    wrong = HTTP.get(gw.url + "/metrics", headers=gw.headers("sk-pw-nope"), timeout=10)
    assert wrong.status_code == 401
    assert "x-request-id" in wrong.headers  # every answer carries one, errors included


def test_requests_tokens_cost_latency_and_errors(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    for _ in range(3):
        assert _chat(gw, "metered").status_code == 200
    with HTTP.stream(
        "POST",
        gw.base_url + "/chat/completions",
        json={"model": "metered", "messages": MSGS, "stream": True},
        headers=gw.headers(),
        timeout=20,
    ) as resp:
        assert resp.status_code == 200
        resp.read()
    failed = _chat(gw, "mx/broken-model@500")  # not a configured name: labelled "other"
    assert failed.status_code == 502

    fams = _scrape(gw)  # one worker answers; the counts are both workers'
    ok = {"endpoint": "chat", "provider": "mx", "model": "metered"}
    assert _value(fams, "portway_requests", "portway_requests_total", status="200", **ok) == 4
    assert _value(fams, "portway_requests", "portway_requests_total", status="502", model="other") == 1
    hist = "portway_request_duration_seconds"
    assert _value(fams, hist, hist + "_count", **ok) == 4
    assert _value(fams, hist, hist + "_bucket", le="+Inf", **ok) == 4
    ttft = "portway_time_to_first_token_seconds"
    assert _value(fams, ttft, ttft + "_count", **ok) == 1
    prompt = _value(fams, "portway_tokens", "portway_tokens_total", kind="prompt", **ok)
    completion = _value(fams, "portway_tokens", "portway_tokens_total", kind="completion", **ok)
    assert prompt > 0 and completion > 0
    cost = _value(fams, "portway_cost_usd", "portway_cost_usd_total", **ok)
    assert cost == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    errors = _value(
        fams, "portway_upstream_errors", "portway_upstream_errors_total", provider="mx", kind="server"
    )
    assert errors == 2  # the first call and its one retry (retries_per_target: 1)
    # State, sampled: every key's breaker, the writer's backlog, requests in flight.
    assert _value(fams, "portway_breaker_state", "portway_breaker_state", provider="mx", key="mx#1") == 0
    assert "portway_usage_backlog" in fams and "portway_in_flight_requests" in fams
    assert "portway_usage_dropped" in fams
    # Bounded labels: no key, no principal, no client-chosen model name.
    text = HTTP.get(gw.url + "/metrics", headers=gw.headers(), timeout=10).text
    assert "broken-model" not in text and MASTER_KEY not in text and "k-metrics" not in text


async def test_open_on_listen_address(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Open on the configured local address (the socket the request came in on), the key needed elsewhere."""
    raw = {**_config(upstream), "metrics": {"open_on": ["127.0.0.1:9464"]}}
    cfg = parse_config(raw, "test")
    settings = Settings(data_dir=tmp_path, master_key=MASTER_KEY)
    app = create_asgi(settings, cfg)

    async def get(server: tuple[str, int]) -> httpx.Response:
        transport = httpx.ASGITransport(app)
        # httpx's ASGI transport reports the URL's host and port as the server address.
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{server[0]}:{server[1]}") as c:
            return await c.get("/metrics")

    opened = await get(("127.0.0.1", 9464))
    assert opened.status_code == 200 and "portway_requests" in opened.text
    assert (await get(("127.0.0.1", 8080))).status_code == 401


async def test_metrics_disabled(tmp_path: Path, upstream: FakeUpstream) -> None:
    cfg = parse_config({**_config(upstream), "metrics": {"enabled": False}}, "test")
    app = create_asgi(Settings(data_dir=tmp_path, master_key=MASTER_KEY), cfg)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
        resp = await c.get("/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
