"""The native model lists read by providers/listing.py (Anthropic's and Gemini's pages: ids, created,
context, modalities, cursors, junk skipped, sizes bounded) and the paging of openai_compat.collect_pages
(every page, within one timeout, no endless cursors)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.listing import (
    MAX_MODELS,
    ListedModel,
    ListedPage,
    parse_anthropic_models,
    parse_gemini_models,
)
from portway.providers.openai_compat import collect_pages
from tests.fakes import anthropic, gemini


def test_anthropic_page_gives_created_from_rfc3339_images_in_and_the_next_cursor() -> None:
    page = parse_anthropic_models(
        {
            "data": anthropic.MODELS[:2],
            "has_more": True,
            "first_id": "x",
            "last_id": "claude-opus-4-1-20250805",
        }
    )
    assert page.next == "claude-opus-4-1-20250805"
    sonnet, opus = page.models
    assert sonnet == ListedModel(
        "claude-sonnet-4-5-20250929", created=1759104000, modalities_in=("text", "image")
    )
    assert opus.created == 1754352000 and opus.modalities_out == ("text",)
    last = parse_anthropic_models({"data": anthropic.MODELS[2:], "has_more": False, "last_id": "y"})
    assert last.next is None and [m.model for m in last.models] == ["claude-3-5-haiku-20241022"]


def test_anthropic_page_reads_optional_limits_and_skips_junk() -> None:
    data: list[Any] = [
        {"type": "model", "id": "claude-a", "created_at": "2025-02-19T10:30:00.123+02:00"},
        {"type": "model", "id": "claude-b", "created_at": "2025-02-19T00:00:00", "max_input_tokens": 200000},
        {"type": "model", "id": "claude-t", "capabilities": {"image_input": {"supported": False}}},
        {"type": "model", "id": "claude-c", "created_at": "yesterday", "max_input_tokens": True},
        {"type": "workspace", "id": "not-a-model"},
        {"type": "model", "id": ""},
        {"type": "model", "id": "a\nb"},
        {"type": "model", "id": "x" * 201},
        {"type": "model", "id": 7},
        "claude-z",
        None,
    ]
    page = parse_anthropic_models({"data": data, "has_more": True, "last_id": "bad\x00cursor"})
    models = {m.model: m for m in page.models}
    assert list(models) == ["claude-a", "claude-b", "claude-t", "claude-c"]
    assert models["claude-a"].created == 1739953800  # 08:30 UTC
    assert models["claude-b"].created == 1739923200 and models["claude-b"].context_length == 200000
    assert models["claude-t"].modalities_in == ("text",) and models["claude-t"].created is None
    assert models["claude-c"].created is None and models["claude-c"].context_length is None
    assert page.next is None  # an unprintable cursor ends the listing rather than being sent back
    junks: list[Any] = [None, [], {"data": "x"}, {"error": {"type": "api_error"}}]
    for junk in junks:
        assert parse_anthropic_models(junk) == ListedPage([])
    assert parse_anthropic_models({"data": [], "has_more": True, "last_id": "z" * 1001}).next is None


def test_gemini_page_keeps_generate_content_models_without_the_prefix() -> None:
    page = parse_gemini_models({"models": gemini.MODELS, "nextPageToken": "tok/+="})
    assert page.next == "tok/+="
    assert page.models == [
        ListedModel("gemini-2.0-flash", modalities_in=("text", "image", "audio"), context_length=1048576),
        ListedModel("gemini-2.5-pro", modalities_in=("text", "image", "audio"), context_length=1048576),
        ListedModel("gemma-3-27b-it", context_length=131072),  # the embedding model is not a chat model
    ]
    assert parse_gemini_models({"models": gemini.MODELS[:1]}).next is None


def test_gemini_page_skips_junk() -> None:
    models: list[Any] = [
        {"name": "gemini-bare", "supportedGenerationMethods": ["generateContent"], "inputTokenLimit": -1},
        {"name": "tunedModels/mine", "supportedGenerationMethods": ["generateContent"]},
        {"name": "models/", "supportedGenerationMethods": ["generateContent"]},
        {"name": "models/no-methods"},
        {"name": "models/embed", "supportedGenerationMethods": ["embedContent"]},
        {"name": "models/odd", "supportedGenerationMethods": "generateContent"},
        {"name": "models/a\tb", "supportedGenerationMethods": ["generateContent"]},
        {"supportedGenerationMethods": ["generateContent"]},
        42,
    ]
    page = parse_gemini_models({"models": models, "nextPageToken": ""})
    assert page == ListedPage([ListedModel("gemini-bare", modalities_in=("text", "image", "audio"))])
    junks: list[Any] = [None, [], {"models": {}}, {"error": {"code": 400}}]
    for junk in junks:
        assert parse_gemini_models(junk) == ListedPage([])


def test_a_page_is_bounded() -> None:
    many = [{"type": "model", "id": f"m{i}"} for i in range(MAX_MODELS + 10)]
    assert len(parse_anthropic_models({"data": many}).models) == MAX_MODELS
    names = [{"name": f"models/m{i}", "supportedGenerationMethods": ["generateContent"]} for i in range(6000)]
    assert len(parse_gemini_models({"models": names}).models) == MAX_MODELS


def _pages(pages: dict[str | None, ListedPage], asked: list[str | None]) -> Any:
    async def fetch(cursor: str | None, left: float) -> ListedPage:
        assert left > 0
        asked.append(cursor)
        return pages[cursor]

    return fetch


async def test_collect_pages_walks_every_page_once_and_dedups() -> None:
    a, b, c = ListedModel("a"), ListedModel("b"), ListedModel("c")
    asked: list[str | None] = []
    pages = {None: ListedPage([a, b], "p2"), "p2": ListedPage([b, c], "p3"), "p3": ListedPage([], None)}
    assert await collect_pages(_pages(pages, asked), 5) == [a, b, c]
    assert asked == [None, "p2", "p3"]


async def test_collect_pages_stops_at_a_repeated_cursor_and_at_max_models() -> None:
    asked: list[str | None] = []
    loop = {None: ListedPage([ListedModel("a")], "p"), "p": ListedPage([ListedModel("b")], "p")}
    assert [m.model for m in await collect_pages(_pages(loop, asked), 5)] == ["a", "b"]
    assert asked == [None, "p"]

    calls = 0

    async def endless(cursor: str | None, left: float) -> ListedPage:
        nonlocal calls
        calls += 1
        return ListedPage([ListedModel(f"m{calls}-{i}") for i in range(1000)], f"c{calls}")

    assert len(await collect_pages(endless, 5)) == MAX_MODELS and calls == 5


async def test_collect_pages_fails_when_time_runs_out_rather_than_returning_part() -> None:
    async def slow(cursor: str | None, left: float) -> ListedPage:
        await asyncio.sleep(0.06)
        return ListedPage([ListedModel(cursor or "first")], (cursor or "") + "x")

    with pytest.raises(UpstreamFailure) as err:
        await collect_pages(slow, 0.1)
    assert err.value.kind is FailureKind.TIMEOUT
