"""Fallback, key pools, deadline, breaker and stream failures: a real portway before the fake upstream."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

pytestmark = pytest.mark.deadline  # tests/conftest.py: never beside a local-model test

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
MSGS = [{"role": "user", "content": "ping"}]
# The shared config's timings, cut to what still shows each behaviour: every second here is waited for.
DEADLINE = 2.5
FIRST_BYTE = 0.5
COOLDOWN = 0.75  # breaker_cooldown
RETRY_AFTER = 0.8  # what the fake's 429 asks for


def resilience_config(upstream: FakeUpstream) -> dict[str, Any]:
    cfg = gateway_config(upstream)
    cfg["routing"].update(deadline=DEADLINE, first_byte_timeout=FIRST_BYTE, breaker_cooldown=COOLDOWN)
    return cfg


@pytest.fixture(scope="module")
def _shared(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PortwayProcess]]:
    procs = [PortwayProcess(tmp_path_factory.mktemp("gw"), resilience_config(upstream))]
    yield procs
    procs[0].stop()


@pytest.fixture
def gateway(
    _shared: list[PortwayProcess], upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> PortwayProcess:
    """One process for the module while it is as good as fresh, a new one when it is not.

    Key cool-downs, pools and breakers are per (provider, key) and must not leak from one test into the next.
    The tests that share `up` and `up2` leave at most two failures there, below the breaker's threshold of
    three, and a success clears them (breakers count consecutive failures); the other providers have one test
    each. So two successful calls make the process as good as fresh; when either fails (a key was taken out of
    a pool, a breaker is open) the next test gets a process of its own.
    """
    if not _as_good_as_fresh(_shared[0], upstream):
        _shared[0].stop()
        _shared[0] = PortwayProcess(tmp_path_factory.mktemp("gw"), resilience_config(upstream))
    return _shared[0]


@pytest.fixture
def client(gateway: PortwayProcess) -> openai.OpenAI:
    """conftest's session-scoped client would outlive a replaced process: one client per process here."""
    return _sdk_client(gateway.base_url, gateway.master_key or "")


@functools.cache
def _sdk_client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=20)


def _as_good_as_fresh(gw: PortwayProcess, upstream: FakeUpstream) -> bool:
    upstream.reset()  # no fault a test scripted and left unused may answer these
    try:
        for provider in ("up", "up2"):
            r = HTTP.post(
                gw.base_url + "/chat/completions",
                json={"model": f"{provider}/fake-model", "messages": MSGS},
                headers=gw.headers(),
                timeout=10,
            )
            if r.status_code != 200 or r.headers.get("x-portway-provider") != provider:
                return False
        return [q.key for q in upstream.requests] == ["k-main", "k-second"]
    finally:
        upstream.reset()


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
    upstream.script([f"429:{RETRY_AFTER}"], model="rl-model", key="k-rl-1")
    upstream.script([f"429:{RETRY_AFTER}"], model="rl-model", key="k-rl-2")
    out = client.chat.completions.with_raw_response.create(model="limited", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up2"
    assert sorted(r.key or "" for r in upstream.requests if r.model == "rl-model") == ["k-rl-1", "k-rl-2"]
    upstream.reset()
    client.chat.completions.create(model="limited", messages=MSGS)  # both keys cooling: straight to up2
    assert models_called(upstream) == ["fake-model"]
    time.sleep(RETRY_AFTER + 0.2)  # Retry-After honoured: after it the keys are used again
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
    assert elapsed < DEADLINE + 2  # one deadline, not one per attempt (2 x DEADLINE)
    assert upstream.wait_for(lambda rs: rs and rs[0].disconnected)  # the hung upstream call was abandoned


def test_breaker_opens_then_half_open_probe(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.script(["500"] * 3, model="brk-model")
    for _ in range(2):  # 2 + 1 failures reach the threshold of 3
        client.chat.completions.create(model="breaker", messages=MSGS)
    assert models_called(upstream).count("brk-model") == 3
    upstream.reset()
    out = client.chat.completions.with_raw_response.create(model="breaker", messages=MSGS)
    assert out.headers["x-portway-provider"] == "up2"
    assert models_called(upstream) == ["fake-model"]  # open: brk not even called
    time.sleep(COOLDOWN + 0.1)
    upstream.reset()
    out = client.chat.completions.with_raw_response.create(model="breaker", messages=MSGS)
    assert out.headers["x-portway-provider"] == "brk"  # half-open probe succeeded: closed again
    assert models_called(upstream) == ["brk-model"]


@pytest.mark.parametrize("fault", ["500", "reset", "garbage", f"slow:{FIRST_BYTE * 1.6}"])
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
    r = HTTP.post(gateway.base_url + "/chat/completions", json=body, headers=gateway.headers())
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
    with HTTP.stream(
        "POST", gateway.base_url + "/chat/completions", json=body, headers=gateway.headers()
    ) as r:
        for _ in r.iter_raw():
            break  # read the first bytes, then hang up
    assert upstream.wait_for(lambda rs: bool(rs) and rs[0].disconnected, timeout=5)
    assert not upstream.requests[0].completed


# Last of the `gateway` tests: its 401 takes up2's only key out of the pool, and the process would have to be
# replaced for any test after it.
def test_all_targets_fail_lists_attempts_without_secrets(
    gateway: PortwayProcess, upstream: FakeUpstream
) -> None:
    upstream.script(["500", "500"], model="chain-first")
    upstream.script(["401"], model="fake-model")
    r = HTTP.post(
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


# -- issue 11 #3 and #5: a hung primary, 403 per model, 401 re-probe ---------------------------------------

RECHECK = 0.5  # routing.key_recheck_after, small so the re-probe is seen within the test
RDEADLINE = 2.0  # the hung attempt gets all of it but healthy's min_attempt_time share


@pytest.fixture(scope="module")
def rgw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    """One process for these tests: each uses its own providers, so key and breaker state never cross."""
    fake = upstream.base_url

    def prov(key: str) -> dict[str, object]:
        return {"type": "openai", "base_url": fake, "api_keys": [key]}

    config = {
        "routing": {
            "deadline": RDEADLINE,  # attempt_timeout (30) and min_attempt_time (0.5) at their defaults
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "breaker_threshold": 2,
            "key_recheck_after": RECHECK,
        },
        "providers": {
            "hung": prov("k-hung"),
            "healthy": prov("k-healthy"),
            "solo": prov("k-solo"),
            "rejected": prov("k-rejected"),
        },
        "models": {
            "hung-first": ["hung/fake-model@hang", "healthy/fake-model"],
            "perm": ["solo/fake-model@403", "solo/fake-model"],
        },
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("gw-resilience"), config)
    yield proc
    proc.stop()


def _chat(gw: PortwayProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": MSGS}
    return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=gw.headers(), timeout=20)


def _timed_chat(gw: PortwayProcess, model: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = _chat(gw, model)
    return r, time.monotonic() - started


def test_hung_primary_falls_back_inside_the_deadline(rgw: PortwayProcess, upstream: FakeUpstream) -> None:
    # 7 runs at once (one deadline's time in all): each must reach `healthy` inside the deadline.
    with ThreadPoolExecutor(7) as pool:
        runs = list(pool.map(lambda _: _timed_chat(rgw, "hung-first"), range(7)))
    for r, elapsed in runs:
        assert r.status_code == 200, r.text
        assert r.headers["x-portway-provider"] == "healthy" and elapsed < RDEADLINE
    hung = [q for q in upstream.requests if q.key == "k-hung"]
    assert len(hung) == 7  # no retry of the hung target: it would have eaten healthy's share
    assert upstream.wait_for(lambda rs: all(q.disconnected for q in rs if q.key == "k-hung"))
    for _ in range(3):  # healthy's breaker is closed: direct calls are answered
        r = _chat(rgw, "healthy/fake-model")
        assert r.status_code == 200, r.text


def test_403_for_one_model_keeps_the_key_for_the_others(rgw: PortwayProcess, upstream: FakeUpstream) -> None:
    r = _chat(rgw, "perm")
    assert r.status_code == 200, r.text
    assert r.headers["x-portway-provider"] == "solo"
    assert [q.model for q in upstream.requests] == ["fake-model@403", "fake-model"]  # no retry of the 403
    r = _chat(rgw, "solo/fake-model@403")
    assert r.status_code == 502 and r.json()["error"]["attempts"][0]["outcome"] == "forbidden"
    for _ in range(3):
        assert _chat(rgw, "solo/fake-model").status_code == 200  # same provider, same only key


def test_401_key_is_rechecked_after_key_recheck_after(rgw: PortwayProcess, upstream: FakeUpstream) -> None:
    upstream.script(["401"], key="k-rejected")
    assert _chat(rgw, "rejected/fake-model").status_code == 502
    r = _chat(rgw, "rejected/fake-model")
    assert r.status_code == 503 and len(upstream.requests) == 1  # out of the pool: not even called
    time.sleep(RECHECK)
    r = _chat(rgw, "rejected/fake-model")
    assert r.status_code == 200, r.text  # re-probed, and the upstream takes the key again
    assert [q.key for q in upstream.requests] == ["k-rejected", "k-rejected"]
