from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from tests import services
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


# Session-scoped: an SDK client costs ~27 ms of CPU to build (its TLS context), and holds no test's state.
@pytest.fixture(scope="session")
def client(gateway: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=gateway.master_key, max_retries=0, timeout=20)


@pytest.fixture(scope="session")
def direct(upstream: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key="k-main", max_retries=0, timeout=20)


async def _pg_admin(sql: str) -> None:
    import asyncpg  # the dev extra has it; imported here so collecting the suite does not need it

    con = await asyncpg.connect(services.POSTGRES_URL)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server (PORTWAY_TEST_POSTGRES_URL), dropped afterwards."""
    services.require("postgres")
    name = "portway_test_" + secrets.token_hex(4)
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    server = urlsplit(services.POSTGRES_URL)._replace(scheme="postgresql+asyncpg", path="/" + name)
    yield server.geturl()
    asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
