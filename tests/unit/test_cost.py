"""Pricing for chat and media: per-unit prices, the lookup (exact, then globs, each price on its own), free
providers, the reservation estimate, the config's validation, and a hand-priced reconciliation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from portway.config import PriceConfig, parse_config
from portway.errors import ConfigError
from portway.providers.media import MediaUnits, Task
from portway.usage.cost import (
    AUDIO_BYTES_PER_SECOND,
    DEFAULT_VIDEO_SECONDS,
    Pricing,
    estimate_units,
    image_price,
)


def _pricing(entries: dict[str, dict[str, Any]], free: set[str] | None = None) -> Pricing:
    """Through the config model, as the runtime builds it."""
    return Pricing({k: PriceConfig(**v) for k, v in entries.items()}, free or set())


PRICES: dict[str, dict[str, Any]] = {
    "openai/gpt-4o-mini": {"input": 0.15, "output": 0.6},
    "openai/text-embedding-3-small": {"input": 0.02},
    "openai/dall-e-3": {"image": {"1024x1024": 0.04, "1024x1792": 0.08, "*": 0.12}},
    "openai/dall-e-2": {"image": {"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.02}},
    "openai/tts-1": {"characters": 15.0},
    "openai/whisper-1": {"audio_minute": 0.006},
    "openai/sora-2": {"video_second": 0.1},
    "hf/*": {"image": 0.01, "audio_minute": 0.002},
    "openai/*": {"input": 5.0, "output": 10.0},
}


# -- the lookup ---------------------------------------------------------------------------------------------


def test_each_price_is_looked_up_on_its_own() -> None:
    p = _pricing(PRICES)
    # dall-e-3 has only an image price: its token price comes from the glob that sets one.
    assert p.price("openai/dall-e-3") == (5.0, 10.0)
    assert p.prices("openai/dall-e-3").image == {"1024x1024": 0.04, "1024x1792": 0.08, "*": 0.12}
    # An exact entry that sets only `input` prices output at 0, and does not fall through for output.
    assert p.price("openai/text-embedding-3-small") == (0.02, 0.0)
    assert p.price("openai/gpt-4o-mini") == (0.15, 0.6)
    assert p.prices("hf/flux").image == 0.01
    assert p.prices("hf/flux").tokens is None  # nobody prices hf tokens: unpriced, $0
    assert p.cost("hf/flux", 1_000_000, 1_000_000) == 0.0


def test_globs_in_config_order_first_match_wins() -> None:
    p = _pricing({"x/big-*": {"image": 0.5}, "x/*": {"image": 0.1}})
    assert p.media_cost("x/big-one", MediaUnits(images=2)) == pytest.approx(1.0)
    assert p.media_cost("x/small", MediaUnits(images=2)) == pytest.approx(0.2)
    reverse = _pricing({"x/*": {"image": 0.1}, "x/big-*": {"image": 0.5}})
    assert reverse.media_cost("x/big-one", MediaUnits(images=2)) == pytest.approx(0.2)


def test_free_provider_costs_nothing_unless_priced() -> None:
    p = _pricing({"local/*": {"characters": 1.0}}, free={"local"})
    assert p.media_cost("local/piper", MediaUnits(characters=1_000_000)) == pytest.approx(1.0)
    # Priced for speech only: its embeddings, images and transcription are free, not "unpriced".
    assert p.price("local/minilm") == (0.0, 0.0)
    units = MediaUnits(prompt_tokens=10**6, images=3, audio_seconds=600, video_seconds=10)
    assert p.media_cost("local/minilm", units) == 0.0
    # The same units on a provider that is not free and not priced cost $0 as well (and say so: None).
    other = _pricing({})
    assert other.prices("groq/x").characters is None
    assert other.media_cost("groq/x", units) == 0.0


def test_chat_tuples_still_build_pricing() -> None:
    """The runtime's old call shape (input, output) keeps working, None meaning unset."""
    p = Pricing({"a/b": (1.0, 2.0), "a/c": (None, None)})
    assert p.price("a/b") == (1.0, 2.0)
    assert p.price("a/c") is None
    assert p.cost("a/b", 500_000, 250_000) == pytest.approx(1.0)


# -- per unit -----------------------------------------------------------------------------------------------


def test_image_price_by_size() -> None:
    sizes = {"1024x1024": 0.04, "1024x1792": 0.08, "*": 0.12}
    assert image_price(0.03, "512x512") == 0.03
    assert image_price(sizes, "1024x1792") == 0.08
    assert image_price(sizes, "256x256") == 0.12  # the glob
    assert image_price(sizes, None) == 0.12  # the upstream's default size: the glob too
    # No glob and a size nobody priced: the dearest listed size, never free.
    assert image_price({"256x256": 0.016, "1024x1024": 0.02}, "2048x2048") == 0.02
    assert image_price({"*x1024": 0.05, "*": 0.01}, "512x1024") == 0.05


def test_media_cost_per_unit() -> None:
    p = _pricing(PRICES)
    assert p.media_cost("openai/text-embedding-3-small", MediaUnits(prompt_tokens=2_000_000)) == 0.04
    assert p.media_cost("openai/dall-e-2", MediaUnits(images=3, image_size="512x512")) == pytest.approx(0.054)
    assert p.media_cost("openai/tts-1", MediaUnits(characters=2_000)) == pytest.approx(0.03)
    assert p.media_cost("openai/whisper-1", MediaUnits(audio_seconds=90)) == pytest.approx(0.009)
    assert p.media_cost("openai/sora-2", MediaUnits(video_seconds=8)) == pytest.approx(0.8)
    assert p.media_cost("openai/dall-e-3", MediaUnits()) == 0.0


def test_media_estimate_is_the_dearest_target() -> None:
    p = _pricing(PRICES)
    units = MediaUnits(images=2, image_size="1024x1024")
    plan = ["openai/dall-e-2", "openai/dall-e-3", "hf/sdxl"]
    assert p.media_estimate(plan, units) == pytest.approx(0.08)  # dall-e-3: 2 x 0.04
    assert p.media_estimate(["hf/sdxl"], units) == pytest.approx(0.02)
    assert p.media_estimate([], units) == 0.0


# -- reconciliation: a day of mixed usage priced by hand -----------------------------------------------------


def test_reconciliation_to_the_cent() -> None:
    p = _pricing(PRICES, free={"local"})
    chat = [  # (target, prompt, completion) tokens
        ("openai/gpt-4o-mini", 120_000, 40_000),  # 0.018 + 0.024 = 0.042
        ("openai/gpt-4.1", 10_000, 2_000),  # the glob: 0.05 + 0.02 = 0.07
        ("local/smollm2", 900_000, 900_000),  # free: 0
    ]
    media = [
        ("openai/text-embedding-3-small", MediaUnits(prompt_tokens=3_500_000)),  # 0.07
        ("openai/dall-e-3", MediaUnits(images=4, image_size="1024x1792")),  # 0.32
        ("openai/dall-e-3", MediaUnits(images=1, image_size="1792x1024")),  # the glob: 0.12
        ("openai/dall-e-2", MediaUnits(images=10, image_size="256x256")),  # 0.16
        ("hf/flux", MediaUnits(images=7, image_size="1024x1024")),  # flat: 0.07
        ("openai/tts-1", MediaUnits(characters=41_000)),  # 0.615
        ("openai/whisper-1", MediaUnits(audio_seconds=1_530)),  # 25.5 min: 0.153
        ("hf/whisper-large", MediaUnits(audio_seconds=3_600)),  # 60 min: 0.12
        ("openai/sora-2", MediaUnits(video_seconds=12)),  # 1.20
        ("local/minilm", MediaUnits(prompt_tokens=10**7)),  # free: 0
        ("groq/whisper", MediaUnits(audio_seconds=600)),  # unpriced: 0
    ]
    by_hand = 0.042 + 0.07 + 0.07 + 0.32 + 0.12 + 0.16 + 0.07 + 0.615 + 0.153 + 0.12 + 1.20
    total = sum(p.cost(t, i, o) for t, i, o in chat) + sum(p.media_cost(t, u) for t, u in media)
    assert round(total, 2) == round(by_hand, 2) == 2.94
    assert math.isclose(total, by_hand, abs_tol=1e-9)


# -- config -------------------------------------------------------------------------------------------------


def test_config_takes_every_unit_price() -> None:
    cfg = parse_config(
        {
            "pricing": {
                "openai/dall-e-3": {"image": {"1024x1024": 0.04, "*": 0.08}},
                "openai/tts-1": {"characters": 15},
                "openai/*": {"input": 1, "output": 2, "audio_minute": 0.006, "video_second": 0.1},
            }
        },
        env={},
    )
    assert cfg.pricing["openai/tts-1"].characters == 15.0
    assert cfg.pricing["openai/tts-1"].input is None
    assert cfg.pricing["openai/dall-e-3"].image == {"1024x1024": 0.04, "*": 0.08}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": -1}, "pricing.m/x.input"),
        ({"characters": float("inf")}, "pricing.m/x.characters"),
        ({"audio_minute": float("nan")}, "pricing.m/x.audio_minute"),
        ({"video_second": "1e999"}, "pricing.m/x.video_second"),
        ({"image": {"1024x1024": -0.04}}, "pricing.m/x.image"),
        ({"image": {}}, "price per size"),
        ({"image": {"": 0.1}}, "price per size"),
        ({}, "set at least one of"),
        ({"per_image": 0.04}, "per_image"),
    ],
)
def test_config_rejects_bad_prices(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"pricing": {"m/x": entry}}, env={})


# -- estimates before the call ------------------------------------------------------------------------------


def test_estimate_units_per_task() -> None:
    e = estimate_units
    assert e(Task.EMBEDDINGS, {"input": "abcdefgh"}) == MediaUnits(prompt_tokens=3)
    assert e(Task.EMBEDDINGS, {"input": ["abcd", "é" * 4]}).prompt_tokens == 2 + 3  # UTF-8 bytes
    assert e(Task.EMBEDDINGS, {"input": [1, 2, 3]}).prompt_tokens == 3  # a token array
    assert e(Task.EMBEDDINGS, {"input": [[1, 2], [3]]}).prompt_tokens == 3
    assert e(Task.IMAGE_GENERATION, {"prompt": "x", "n": 3, "size": "512x512"}) == MediaUnits(
        images=3, image_size="512x512"
    )
    assert e(Task.IMAGE_EDIT, {"prompt": "x"}, 5_000_000) == MediaUnits(images=1)
    assert e(Task.SPEECH, {"input": "Hello there"}) == MediaUnits(characters=11)
    audio = e(Task.TRANSCRIPTION, {"model": "whisper-1"}, 10 * 1024 * 1024)
    assert audio.audio_seconds == pytest.approx(10 * 1024 * 1024 / AUDIO_BYTES_PER_SECOND)
    assert e(Task.TRANSLATION, {}, 32_000).audio_seconds == pytest.approx(2.0)
    assert e(Task.VIDEO, {"prompt": "x", "seconds": "8"}) == MediaUnits(video_seconds=8.0)
    assert e(Task.VIDEO, {"prompt": "x"}).video_seconds == DEFAULT_VIDEO_SECONDS
    assert e(Task.CHAT, {"messages": []}) == MediaUnits()


@pytest.mark.parametrize(
    ("task", "payload"),
    [
        (Task.EMBEDDINGS, {"input": None}),
        (Task.EMBEDDINGS, {}),
        (Task.IMAGE_GENERATION, {"n": "three", "size": 1024}),
        (Task.IMAGE_GENERATION, {"n": True}),
        (Task.SPEECH, {"input": 42}),
        (Task.VIDEO, {"seconds": "forever"}),
        (Task.VIDEO, {"seconds": "nan"}),
        (Task.VIDEO, {"seconds": -3}),
    ],
)
def test_estimate_units_tolerates_odd_fields(task: Task, payload: dict[str, Any]) -> None:
    units = estimate_units(task, payload)
    assert units.images in (0, 1)
    assert units.image_size is None
    assert units.prompt_tokens == units.characters == 0
    assert units.video_seconds in (0.0, DEFAULT_VIDEO_SECONDS)


def test_estimate_prices_like_the_call() -> None:
    """Admission reserves the price of the estimated units, at the dearest target (local is free)."""
    p = _pricing(PRICES)
    units = estimate_units(Task.SPEECH, {"input": "x" * 4_000})
    assert p.media_estimate(["openai/tts-1", "local/piper"], units) == pytest.approx(0.06)
