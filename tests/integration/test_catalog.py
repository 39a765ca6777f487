"""GET /v1/models and GET /v1/catalog through a running portway: an OpenRouter-shaped fake upstream's list
(pricing, context, modalities) merged with the config and the bundled table, filters, each model's own
`created`, the grouping of seed 001, a provider that is down served stale, and auth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.upstream import OPENROUTER_MODELS, FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def routers() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream().start() as listing, FakeUpstream().start() as down:
        listing.models_data = OPENROUTER_MODELS
        down.models_fault = "503"
        yield listing, down


@pytest.fixture(scope="module")
def gw(
    routers: tuple[FakeUpstream, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortwayProcess]:
    listing, down = routers
    config: dict[str, Any] = {
        "providers": {
            "or": {"type": "openai", "base_url": listing.base_url, "api_keys": ["k-or"]},
            "dn": {"type": "openai", "base_url": down.base_url, "api_keys": ["k-dn"], "models": ["kept"]},
        },
        "models": {"vision": ["or/vendor/vision-pro"], "cheap": ["or/vendor/text-small:free"]},
        "pricing": {"or/vendor/text-small": {"input": 0.5, "output": 1.5}},  # the operator's override
        "catalog": {"ttl_seconds": 1800, "retry_seconds": 0.2},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("catalog"), config)
    yield proc
    proc.stop()


def _get(gw: PortwayProcess, path: str, **params: Any) -> Any:
    r = HTTP.get(gw.url + path, params=params, headers=gw.headers(), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _listed(gw: PortwayProcess) -> dict[str, Any]:
    until = time.monotonic() + 15
    while True:  # the list is fetched in the background after start
        data = {m["id"]: m for m in _get(gw, "/v1/models")["data"]}
        if "or/vendor/text-small" in data:  # listed by the provider only (vision-pro is also configured)
            return data
        assert time.monotonic() < until, f"the provider's models never appeared: {sorted(data)}"
        time.sleep(0.05)


def test_models_lists_the_providers_models_with_their_own_created_and_filters(gw: PortwayProcess) -> None:
    models = _listed(gw)
    assert models["or/vendor/vision-pro"] == {
        "id": "or/vendor/vision-pro",
        "object": "model",
        "created": 1720000000,
        "owned_by": "or",
    }
    assert models["vision"]["owned_by"] == "portway" and models["vision"]["created"] == 1720000000
    assert models["dn/kept"]["created"] > 0  # no list of its own: when portway first saw it, stored
    vision = _get(gw, "/v1/models", modality="image")["data"]
    assert {m["id"] for m in vision} == {"vision", "or/vendor/vision-pro"}
    free = {m["id"] for m in _get(gw, "/v1/models", free="true")["data"]}
    assert free == {"cheap", "or/vendor/text-small:free"}
    assert {m["id"] for m in _get(gw, "/v1/models", provider="dn")["data"]} == {"dn/kept"}
    one = _get(gw, "/v1/models/or/vendor/text-small:free")
    assert one["id"] == "or/vendor/text-small:free" and one["created"] == 1710000001


def test_catalog_groups_with_prices_and_flags_the_provider_that_is_down(gw: PortwayProcess) -> None:
    _listed(gw)
    body = _get(gw, "/v1/catalog")
    assert body["object"] == "catalog" and body["stale"] is True  # dn's list answers 503
    groups, stats = body["models"], body["stats"]
    assert set(groups) == {"all", "multimodal", "textOnly", "free", "paid", "byProvider"}
    assert stats["total"] == len(groups["all"]) and stats["free"] == len(groups["free"]) == 2
    assert stats["multimodal"] == 2 and stats["byProvider"] == {"portway": 2, "or": 3, "dn": 1}
    entry = {m["id"]: m for m in groups["all"]}
    vision = entry["or/vendor/vision-pro"]
    assert (vision["input"], vision["cached_input"], vision["output"], vision["reasoning"]) == (
        2.0,
        0.5,
        8.0,
        10.0,
    )
    assert vision["context_length"] == 128000 and vision["modalities_in"] == ["text", "image"]
    assert (entry["or/vendor/text-small"]["input"], entry["or/vendor/text-small"]["output"]) == (0.5, 1.5)
    paid = _get(gw, "/v1/catalog", free="false")
    assert "or/vendor/text-small:free" not in {m["id"] for m in paid["models"]["all"]}


def test_catalog_routes_need_a_key_and_refuse_bad_filters(gw: PortwayProcess) -> None:
    for path in ("/v1/models", "/v1/catalog"):
        r = HTTP.get(gw.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = HTTP.get(gw.url + "/v1/models", params={"free": "maybe"}, headers=gw.headers(), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_error"
    r = HTTP.get(gw.url + "/v1/models/or/nope", headers=gw.headers(), timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
