"""The catalog reads Anthropic's and Gemini's own model lists: the providers over a real Transport against
the fake upstream (both pages, auth header, errors classified, nothing journaled), and a running portway
whose /v1/models and /v1/catalog list those models with their created and context_length."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from portway.http.client import Transport
from portway.providers.anthropic import AnthropicProvider
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.gemini import GeminiProvider
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
CLAUDE = {
    "claude-sonnet-4-5-20250929": 1759104000,
    "claude-opus-4-1-20250805": 1754352000,
    "claude-3-5-haiku-20241022": 1729555200,
}
GEMINI = {"gemini-2.0-flash": 1048576, "gemini-2.5-pro": 1048576, "gemma-3-27b-it": 131072}


@pytest.fixture(scope="module")
def native() -> Iterator[FakeUpstream]:
    with FakeUpstream().start() as up:
        yield up


# -- the providers themselves ---------------------------------------------------------------------------


async def test_anthropic_lists_every_page_with_its_key_and_version(native: FakeUpstream) -> None:
    transport = Transport()
    provider = AnthropicProvider(ProviderSettings("ant", "anthropic", native.url + "/v1"), transport)
    try:
        before, journal = native.model_listings, len(native.requests)
        models = await provider.list_models("k-ant", 5)
        assert {m.model: m.created for m in models} == CLAUDE
        assert all(m.modalities_in == ("text", "image") for m in models)
        assert native.model_listings - before == 2 and len(native.requests) == journal  # two pages
        with pytest.raises(UpstreamFailure) as err:
            await provider.list_models(None, 5)  # no x-api-key: Anthropic's 401
        assert err.value.kind is FailureKind.AUTH and err.value.status == 401
    finally:
        await transport.aclose()


async def test_gemini_lists_chat_models_of_every_page_with_the_key_in_its_header(
    native: FakeUpstream,
) -> None:
    transport = Transport()
    provider = GeminiProvider(ProviderSettings("gem", "gemini", native.url), transport)
    try:
        before = native.model_listings
        models = await provider.list_models("k-gem", 5)  # the fake refuses a key= in the URL
        assert {m.model: m.context_length for m in models} == GEMINI  # text-embedding-004 left out
        assert native.model_listings - before == 2
        with pytest.raises(UpstreamFailure) as err:
            await provider.list_models(None, 5)  # Google: 400 API_KEY_INVALID
        assert err.value.kind is FailureKind.AUTH
        native.models_fault = "503"
        try:
            with pytest.raises(UpstreamFailure) as err:
                await provider.list_models("k-gem", 5)
            assert err.value.kind is FailureKind.SERVER
        finally:
            native.models_fault = None
    finally:
        await transport.aclose()


# -- through portway ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(native: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    config: dict[str, Any] = {
        "providers": {
            "anthropic": {"type": "anthropic", "base_url": native.url, "api_keys": ["k-ant"]},
            "gemini": {"type": "gemini", "base_url": native.url, "api_keys": ["k-gem"]},
        },
        "models": {"claude": ["anthropic/claude-sonnet-4-5-20250929"]},
        "catalog": {"ttl_seconds": 1800, "retry_seconds": 0.2},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("catalog-native"), config)
    yield proc
    proc.stop()


def _get(gw: PortwayProcess, path: str, **params: Any) -> Any:
    r = HTTP.get(gw.url + path, params=params, headers=gw.headers(), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _listed(gw: PortwayProcess) -> dict[str, Any]:
    until = time.monotonic() + 15
    while True:  # the lists are fetched in the background after start
        data = {m["id"]: m for m in _get(gw, "/v1/models")["data"]}
        if "anthropic/claude-opus-4-1-20250805" in data and "gemini/gemma-3-27b-it" in data:
            return data
        assert time.monotonic() < until, f"the providers' models never appeared: {sorted(data)}"
        time.sleep(0.05)


def test_models_lists_both_providers_models_with_their_created(gw: PortwayProcess) -> None:
    models = _listed(gw)
    for model, created in CLAUDE.items():
        assert models[f"anthropic/{model}"] == {
            "id": f"anthropic/{model}",
            "object": "model",
            "created": created,
            "owned_by": "anthropic",
        }
    assert (
        models["claude"]["owned_by"] == "portway"
        and models["claude"]["created"] == CLAUDE["claude-sonnet-4-5-20250929"]
    )
    assert {m for m in models if m.startswith("gemini/")} == {f"gemini/{m}" for m in GEMINI}
    # The bundled table's models are not added to a provider that lists its own.
    assert "anthropic/claude-sonnet-4-0" not in models and "gemini/gemini-2.5-flash" not in models
    images = {m["id"] for m in _get(gw, "/v1/models", modality="image")["data"]}
    assert images == {
        "claude",
        *(f"anthropic/{m}" for m in CLAUDE),
        "gemini/gemini-2.0-flash",
        "gemini/gemini-2.5-pro",
    }


def test_catalog_has_context_length_modalities_and_table_prices(gw: PortwayProcess) -> None:
    _listed(gw)
    body = _get(gw, "/v1/catalog")
    assert body["stale"] is False and body["stats"]["byProvider"] == {
        "portway": 1,
        "anthropic": 3,
        "gemini": 3,
    }
    entry = {m["id"]: m for m in body["models"]["all"]}
    for model, context in GEMINI.items():
        assert entry[f"gemini/{model}"]["context_length"] == context
    flash = entry["gemini/gemini-2.0-flash"]
    assert flash["modalities_in"] == ["text", "image", "audio"] and flash["modalities_out"] == ["text"]
    assert (flash["input"], flash["output"]) == (0.1, 0.4)  # the bundled price of a listed model
    assert entry["gemini/gemma-3-27b-it"]["modalities_in"] == ["text"]
    sonnet = entry["anthropic/claude-sonnet-4-5-20250929"]
    assert sonnet["modalities_in"] == ["text", "image"] and sonnet["created"] == 1759104000
