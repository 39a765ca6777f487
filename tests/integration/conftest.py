from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream().start() as up:
        yield up


def gateway_config(up: FakeUpstream) -> dict[str, Any]:
    """One config, one provider per scenario, so tests sharing the server never share key or breaker state."""
    fake = up.base_url

    def prov(*keys: str) -> dict[str, Any]:
        return {"type": "openai", "base_url": fake, "api_keys": list(keys)}

    return {
        "server": {"max_body_bytes": 64 * 1024},
        "routing": {
            "deadline": 4,
            "first_byte_timeout": 1,
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "breaker_threshold": 3,
            "breaker_cooldown": 1.5,
        },
        "providers": {
            "up": prov("k-main"),
            "up2": prov("k-second"),
            "pool": prov("bad-key-1", "k-pool"),
            "rl": prov("k-rl-1", "k-rl-2"),
            "brk": prov("k-brk"),
            "nokey": {"type": "openai", "base_url": fake, "api_keys": ["${PORTWAY_TEST_UNSET_VAR}"]},
        },
        "models": {
            "direct": ["up/fake-model"],
            "chain": ["up/chain-first", "up2/fake-model"],
            "pooled": ["pool/pool-model"],
            "limited": ["rl/rl-model", "up2/fake-model"],
            "breaker": ["brk/brk-model", "up2/fake-model"],
            "flaky": ["up/flaky-model", "up2/fake-model"],
            "single": ["up/single-model"],
            "ghost": ["nokey/x"],
        },
    }


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("gw"), gateway_config(upstream))
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _clean_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture
def client(gateway: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.master_key, max_retries=0, timeout=20)


@pytest.fixture
def direct(upstream: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key="k-main", max_retries=0, timeout=20)
