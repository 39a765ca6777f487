"""The catalog's pure parts and its merge: model lists in OpenAI's, OpenRouter's and Hugging Face's shapes,
the order of price sources, cached and reasoning tokens priced apart, and a Catalog over a real SQLite
store with providers that answer, fail and list nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from portway.config import CatalogConfig, parse_config
from portway.providers.base import FailureKind, UpstreamFailure, Usage
from portway.providers.listing import ListedModel, parse_model_list
from portway.routing.keypool import KeyPool
from portway.routing.router import Router
from portway.services.catalog import Catalog
from portway.stores.sql.catalog import CatalogStore
from portway.stores.sql.database import Database
from portway.usage.cost import Pricing, UnitPrices, bundled_table, cost_header
from tests.fakes.upstream import OPENROUTER_MODELS


def test_openrouter_list_gives_prices_per_million_context_and_modalities() -> None:
    models = {m.model: m for m in parse_model_list({"data": OPENROUTER_MODELS})}
    vision = models["vendor/vision-pro"]
    assert (vision.input, vision.cached_input, vision.output, vision.reasoning) == (2.0, 0.5, 8.0, 10.0)
    assert vision.modalities_in == ("text", "image") and vision.modalities_out == ("text",)
    assert vision.context_length == 128000 and vision.created == 1720000000 and vision.free is None
    assert models["vendor/text-small:free"].free is True
    assert models["vendor/text-small"].input == pytest.approx(0.1)


def test_hugging_face_and_openai_lists_and_junk() -> None:
    hf = {
        "data": [
            {
                "id": "meta-llama/Llama-3.1-8B-Instruct",
                "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                "providers": [
                    {"provider": "x", "status": "error", "pricing": {"input": 9, "output": 9}},
                    {
                        "provider": "y",
                        "status": "live",
                        "context_length": 8192,
                        "pricing": {"input": 0.02, "output": 0.05},
                    },
                ],
            }
        ]
    }
    (llama,) = parse_model_list(hf)
    assert (llama.input, llama.output, llama.context_length) == (0.02, 0.05, 8192)
    plain = parse_model_list({"data": [{"id": "gpt-x", "created": 5}, {"id": ""}, 7, {"id": "a\nb"}]})
    assert plain == [ListedModel("gpt-x", created=5)]
    assert parse_model_list({"error": "nope"}) == [] and parse_model_list(None) == []
    weird = parse_model_list([{"id": "m", "pricing": {"prompt": "-1", "completion": "nan"}}])
    assert weird[0].input is None and weird[0].output is None


def test_price_sources_config_then_listed_then_table() -> None:
    table = {
        "p/m": {"input": 1.0, "cached_input": 0.1, "output": 2.0, "image": 0.5},
        "p/*": {"characters": 3.0},
    }
    pricing = Pricing({"p/m": (4.0, 8.0)}, (), table)
    p = pricing.prices("p/m")
    # The operator's tokens come with no cached price of the table's: cached tokens then cost `input`.
    assert p.tokens == (4.0, 8.0) and p.cached_input is None and p.image == 0.5 and p.characters == 3.0
    pricing = Pricing({}, (), table)
    pricing.set_listed({"p/m": UnitPrices((3.0, 6.0), reasoning=12.0)})
    assert pricing.prices("p/m").tokens == (3.0, 6.0) and pricing.prices("p/m").reasoning == 12.0
    pricing.set_listed({})
    assert pricing.prices("p/m").tokens == (1.0, 2.0) and pricing.prices("p/m").cached_input == 0.1
    assert "openai/gpt-4o-mini" in bundled_table()


def test_cached_and_reasoning_tokens_are_priced_apart() -> None:
    pricing = Pricing({}, (), {"p/m": {"input": 2.0, "cached_input": 0.5, "output": 8.0, "reasoning": 10.0}})
    usage = Usage(prompt_tokens=1000, completion_tokens=400, cached_tokens=600, reasoning_tokens=100)
    expected = (400 * 2.0 + 600 * 0.5 + 300 * 8.0 + 100 * 10.0) / 1e6
    assert pricing.usage_cost("p/m", usage) == pytest.approx(expected)
    plain = Pricing({"q/*": (2.0, 8.0)})  # no cached/reasoning prices: at input / output
    assert plain.usage_cost("q/m", usage) == pytest.approx((1000 * 2.0 + 400 * 8.0) / 1e6)
    # Counts an upstream got wrong never make a request cheaper than nothing or dearer than all of it.
    odd = Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=50, reasoning_tokens=-3)
    assert pricing.usage_cost("p/m", odd) == pytest.approx((10 * 0.5 + 5 * 8.0) / 1e6)
    assert cost_header(0.000123) == "0.00012300" and cost_header(0.0) == "0.00000000"


class _Provider:
    free = False

    def __init__(self, listed: list[ListedModel] | Exception) -> None:
        self.listed = listed
        self.calls = 0
        self.keys: list[str | None] = []

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        self.calls += 1
        self.keys.append(key)
        if isinstance(self.listed, Exception):
            raise self.listed
        return self.listed


def _cfg() -> Any:
    return parse_config(
        {
            "providers": {
                "or": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_keys": ["k-or"]},
                "groq": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_keys": ["k-g"]},
                "down": {"type": "openai", "base_url": "http://127.0.0.1:9", "api_keys": ["k-d"]},
            },
            "models": {"vision": ["or/vendor/vision-pro", "groq/llama-3.1-8b-instant"], "g": ["groq/extra"]},
            "pricing": {"groq/extra": {"input": 0, "output": 0}},
        }
    )


async def _catalog(tmp_path: Path, providers: dict[str, Any], **cc: Any) -> tuple[Catalog, Database, Pricing]:
    cfg = _cfg()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await db.migrate()
    pools = {
        n: KeyPool(n, list(cfg.providers[n].api_keys), breaker_threshold=3, breaker_cooldown=1)
        for n in providers
    }
    pricing = Pricing(cfg.pricing, (), bundled_table())
    catalog = Catalog(providers, pools, Router(cfg), pricing, CatalogStore(db.engine), CatalogConfig(**cc))
    return catalog, db, pricing


async def _settled(catalog: Catalog, provider: _Provider) -> None:
    for _ in range(200):
        if provider.calls and not catalog._any_due(asyncio.get_running_loop().time()):
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the catalog never refreshed")


async def test_catalog_merges_lists_prices_and_serves_stale_when_a_provider_is_down(tmp_path: Path) -> None:
    listed = parse_model_list({"data": OPENROUTER_MODELS})
    down = _Provider(UpstreamFailure(FailureKind.SERVER, "upstream returned HTTP 503"))
    providers = {"or": _Provider(listed), "groq": _Provider([]), "down": down}
    catalog, db, pricing = await _catalog(tmp_path, providers)
    before = {m.id for m in await catalog.models()}
    assert "vision" in before and "groq/llama-3.1-8b-instant" in before  # config + table, before any fetch
    catalog.start()
    try:
        await _settled(catalog, providers["or"])
        models = {m.id: m for m in await catalog.models()}
    finally:
        await catalog.aclose()
    vision = models["or/vendor/vision-pro"]
    assert (vision.input, vision.cached_input, vision.output, vision.reasoning) == (2.0, 0.5, 8.0, 10.0)
    assert vision.multimodal and vision.created == 1720000000 and not vision.free
    assert models["or/vendor/text-small:free"].free and models["groq/extra"].free  # priced at 0 in config
    alias = models["vision"]
    assert alias.provider == "portway" and alias.input == 2.0 and alias.targets[0] == "or/vendor/vision-pro"
    # The provider's listed prices reach request costs too.
    assert pricing.cost("or/vendor/vision-pro", 1_000_000, 0) == pytest.approx(2.0)
    # groq lists nothing: its models are the configured ones and the bundled table's, at the table's prices.
    assert models["groq/llama-3.1-8b-instant"].input == 0.05 and models["groq/llama-3.1-8b-instant"].created
    assert providers["or"].keys == ["k-or"]
    assert catalog.stale  # `down` failed: stale, flagged
    assert not models["or/vendor/vision-pro"].stale
    assert [m.id for m in await catalog.models(provider="or", modality="image")] == ["or/vendor/vision-pro"]
    assert {m.id for m in await catalog.models(free=True)} >= {"or/vendor/text-small:free", "g"}
    grouping = await catalog.grouping()
    assert grouping["stats"]["total"] == len(models) and grouping["stale"] is True
    assert grouping["stats"]["multimodal"] == len(grouping["models"]["multimodal"]) >= 2
    assert set(grouping["models"]) == {"all", "multimodal", "textOnly", "free", "paid", "byProvider"}
    assert grouping["stats"]["byProvider"]["or"] == 3

    # A new worker (or a restart) serves the stored list at once, and keeps each model's `created`
    # without asking the provider again while the list is fresh.
    again = _Provider(UpstreamFailure(FailureKind.CONNECTION, "refused"))
    second, _, _ = await _catalog(tmp_path, {"or": again, "groq": _Provider([]), "down": down})
    await second._tick()  # one refresh round, here rather than in the background
    stored = {m.id: m for m in await second.models()}
    assert again.calls == 0 and stored["or/vendor/vision-pro"].input == 2.0 and second.cached
    assert stored["groq/llama-3.1-8b-instant"].created == models["groq/llama-3.1-8b-instant"].created
    await db.aclose()


async def test_expired_list_is_served_stale_and_refreshed_in_the_background(tmp_path: Path) -> None:
    first = _Provider(parse_model_list({"data": OPENROUTER_MODELS[:1]}))
    catalog, db, _ = await _catalog(tmp_path, {"or": first}, ttl_seconds=0.3, retry_seconds=0.1)
    catalog.start()
    try:
        await _settled(catalog, first)
        assert not catalog.stale
        first.listed = UpstreamFailure(FailureKind.TIMEOUT, "no model list within 10s")
        await asyncio.sleep(0.5)
        models = await catalog.models()  # never waits for the upstream
        assert first.calls >= 2 and catalog.stale and "or/vendor/vision-pro" in {m.id for m in models}
        first.listed = parse_model_list({"data": OPENROUTER_MODELS})
        for _ in range(100):
            await catalog.models()
            if "or/vendor/text-small" in {m.id for m in await catalog.models()}:
                break
            await asyncio.sleep(0.05)
        assert not catalog.stale and "or/vendor/text-small" in {m.id for m in await catalog.models()}
    finally:
        await catalog.aclose()
        await db.aclose()
