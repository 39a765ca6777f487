"""Fallback, key pools, deadline, breaker and stream failures: a real portway before the fake upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

MSGS = [{"role": "user", "content": "ping"}]


@pytest.fixture
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    """A fresh process per test: key cool-downs and breakers are per (provider, key) and must not leak."""
    proc = PortwayProcess(tmp_path_factory.mktemp("gw"), gateway_config(upstream))
    yield proc
    proc.stop()


def models_called(up: FakeUpstream) -> list[str | None]:
    return [r.model for r in up.requests]


@pytest.mark.parametrize("fault", ["500", "503", "reset", "garbage"])
def test_fallback_to_next_target(client: openai.OpenAI, upstream: FakeUpstream, fault: str) -> None:
    upstream.script([fault, fault], model="chain-first")
    out = client.chat.completions.with_raw_response.create(model="chain", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up2"
    assert out.parse().choices[0].message.content == "Echo: ping"
    assert models_called(upstream) == ["chain-first", "chain-first", "fake-model"]  # one retry, then next


def test_retry_same_target_after_transient_error(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["500"], model="flaky-model")
    out = client.chat.completions.with_raw_response.create(model="flaky", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up"
    assert models_called(upstream) == ["flaky-model", "flaky-model"]


def test_per_request_models_fallback_list(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["400"], model="nope-model")
    upstream.script(["503", "503"], model="single-model")
    out = client.chat.completions.with_raw_response.create(
        model="single", messages=MSGS, extra_body={"models": ["up2/fake-model"]}
    )
    assert out.headers["x-portway-provider"] == "up2"
    assert "models" not in (upstream.requests[-1].body or {})


def test_client_error_is_returned_without_fallback(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["400"], model="chain-first")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chain", messages=MSGS)
    assert err.value.status_code == 400
    assert models_called(upstream) == ["chain-first"]


def test_bad_key_leaves_pool_and_next_key_serves(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    first = client.chat.completions.create(model="pooled", messages=MSGS)
    assert first.choices[0].message.content == "Echo: ping"
    assert [r.key for r in upstream.requests] == ["bad-key-1", "k-pool"]
    upstream.reset()
    for _ in range(3):
        client.chat.completions.create(model="pooled", messages=MSGS)
    assert [r.key for r in upstream.requests] == ["k-pool"] * 3  # the 401 key is out of the pool


def test_429_cools_key_down_then_next_key_then_next_target(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.script(["429:2"], model="rl-model", key="k-rl-1")
    upstream.script(["429:2"], model="rl-model", key="k-rl-2")
    out = client.chat.completions.with_raw_response.create(model="limited", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up2"
    assert sorted(r.key or "" for r in upstream.requests if r.model == "rl-model") == ["k-rl-1", "k-rl-2"]
    upstream.reset()
    client.chat.completions.create(model="limited", messages=MSGS)  # both keys cooling: straight to up2
    assert models_called(upstream) == ["fake-model"]
    time.sleep(2.2)  # Retry-After honoured: after it the keys are used again
    upstream.reset()
    client.chat.completions.create(model="limited", messages=MSGS)
    assert models_called(upstream) == ["rl-model"]


def test_deadline_bounds_the_whole_request(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["hang"], model="single-model")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="single", messages=MSGS)
    elapsed = time.monotonic() - started
    assert err.value.status_code == 504
    assert err.value.code == "upstream_timeout"
    assert elapsed < 7  # deadline is 4 s: one deadline, not one per attempt
    assert upstream.wait_for(lambda rs: rs and rs[0].disconnected)  # the hung upstream call was abandoned


def test_all_targets_fail_lists_attempts_without_secrets(
    gateway: PortwayProcess, upstream: FakeUpstream
) -> None:
    upstream.script(["500", "500"], model="chain-first")
    upstream.script(["401"], model="fake-model")
    r = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "chain", "messages": MSGS},
        headers=gateway.headers(),
    )
    assert r.status_code in (502, 503)
    err = r.json()["error"]
    assert [(a["provider"], a["model"], a["status"]) for a in err["attempts"]] == [
        ("up", "chain-first", 500),
        ("up", "chain-first", 500),
        ("up2", "fake-model", 401),
    ]
    for secret in ("k-main", "k-second", gateway.master_key or "x", "Traceback"):
        assert secret not in r.text


def test_breaker_opens_then_half_open_probe(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["500"] * 3, model="brk-model")
    for _ in range(2):  # 2 + 1 failures reach the threshold of 3
        client.chat.completions.create(model="breaker", messages=MSGS)
    assert models_called(upstream).count("brk-model") == 3
    upstream.reset()
    out = client.chat.completions.with_raw_response.create(model="breaker", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up2"
    assert models_called(upstream) == ["fake-model"]  # open: brk not even called
    time.sleep(1.6)
    upstream.reset()
    out = client.chat.completions.with_raw_response.create(model="breaker", messages=MSGS)
    assert out.headers["x-portway-provider"] == "brk"  # half-open probe succeeded: closed again
    assert models_called(upstream) == ["brk-model"]


@pytest.mark.parametrize("fault", ["500", "reset", "garbage", "slow:1.5"])
def test_stream_failure_before_first_byte_falls_back(
    client: openai.OpenAI, upstream: FakeUpstream, fault: str
) -> None:
    upstream.script([fault, fault], model="chain-first")
    chunks = list(client.chat.completions.create(model="chain", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: ping"
    assert chunks[0].model == "fake-model"


def test_stream_cut_mid_way_ends_with_error_event(gateway: PortwayProcess, upstream: FakeUpstream) -> None:
    upstream.script(["cut"], model="single-model")
    body = {
        "model": "single",
        "messages": [{"role": "user", "content": "one two three four five"}],
        "stream": True,
    }
    r = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=gateway.headers())
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1].startswith('data: {"error"')
    assert '"code":"upstream_error"' in events[-1]
    assert "[DONE]" not in r.text
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.master_key, max_retries=0)
    upstream.script(["cut"], model="single-model")
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="single", messages=body["messages"], stream=True):
            pass


def test_client_disconnect_cancels_upstream(gateway: PortwayProcess, upstream: FakeUpstream) -> None:
    upstream.script(["slowchunks:0.3"], model="single-model")
    body = {
        "model": "single",
        "messages": [{"role": "user", "content": "a b c d e f g h i j k l"}],
        "stream": True,
    }
    with httpx.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers=gateway.headers()
    ) as r:
        for _ in r.iter_raw():
            break  # read the first bytes, then hang up
    assert upstream.wait_for(lambda rs: bool(rs) and rs[0].disconnected, timeout=5)
    assert not upstream.requests[0].completed
