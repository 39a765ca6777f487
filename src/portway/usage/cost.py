"""Prices per model and the cost of a request, in USD: per 1M tokens (chat, embeddings; cached prompt
tokens and reasoning tokens priced apart where a price is listed), per image (flat or by size), per 1M
characters (speech), per minute of audio (transcription) and per second of video.

Where a price comes from, first source first:
1. gateway.yaml's `pricing` (the operator's override): the exact "provider/model" entry, then the globs in
   config order, and the first entry that sets a price wins (so `openai/*: {input, output}` and
   `openai/dall-e-*: {image}` combine);
2. what the provider itself lists (OpenRouter's and Hugging Face's `/models` pricing), as the model catalog
   (services/catalog.py) hands it over with `Pricing.set_listed`;
3. the bundled table, `usage/prices.json` (`bundled_table()`).
Token prices (input, cached_input, output, reasoning) are taken together from the first source that prices
the model's tokens, so an operator's `input` is never mixed with the table's cached price; a cached token
without a cached price costs `input`, a reasoning token without a reasoning price costs `output`. Media
prices are resolved one by one. A model without a price costs $0 for it (and counts nothing toward
budgets); so does every model of a provider that declares itself free (the local models), unless priced.

Also the usage estimates for what an upstream did not report, and a media request's units before the call
(see the end of this module).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from portway.providers.base import Usage
from portway.providers.media import MediaUnits, Task

Price = tuple[float, float]  # (input, output) USD per 1M tokens
_FREE: Price = (0.0, 0.0)
ImagePrice = float | Mapping[str, float]  # flat per image, or by size ("1024x1024", globs like "*")


class PriceSpec(Protocol):
    """One configured entry (config.PriceConfig has this shape); None: this entry does not set that price."""

    @property
    def input(self) -> float | None: ...
    @property
    def output(self) -> float | None: ...
    @property
    def image(self) -> ImagePrice | None: ...
    @property
    def characters(self) -> float | None: ...
    @property
    def audio_minute(self) -> float | None: ...
    @property
    def video_second(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The prices that apply to one target, each resolved on its own; None: unpriced ($0)."""

    tokens: Price | None = None  # (input, output) per 1M tokens; embeddings pay `input`
    image: ImagePrice | None = None
    characters: float | None = None  # per 1M characters
    audio_minute: float | None = None
    video_second: float | None = None
    cached_input: float | None = None  # per 1M cached prompt tokens (None: they cost `input`)
    reasoning: float | None = None  # per 1M reasoning tokens (None: they cost `output`)


_MEDIA_FIELDS = ("image", "characters", "audio_minute", "video_second")
_TOKEN_FIELDS = ("tokens", "cached_input", "reasoning")
_ALL_FREE = UnitPrices(_FREE, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
PriceEntry = Price | tuple[float | None, float | None] | PriceSpec | Mapping[str, Any] | UnitPrices


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def _entry(value: PriceEntry) -> UnitPrices:
    if isinstance(value, UnitPrices):
        return value
    if isinstance(value, tuple):
        inp, out = value
        tokens = None if inp is None and out is None else (inp or 0.0, out or 0.0)
        return UnitPrices(tokens)
    inp, out = _get(value, "input"), _get(value, "output")
    tokens = None if inp is None and out is None else (inp or 0.0, out or 0.0)
    prices = {name: _get(value, name) for name in (*_MEDIA_FIELDS, "cached_input", "reasoning")}
    return UnitPrices(tokens, **prices)


class _Layer:
    """One source of prices: exact ids, then globs in order."""

    def __init__(self, prices: Mapping[str, PriceEntry]) -> None:
        entries = {k: _entry(v) for k, v in prices.items()}
        self.exact = {k: v for k, v in entries.items() if not _is_glob(k)}
        self.globs = [(k, v) for k, v in entries.items() if _is_glob(k)]

    def matching(self, target_id: str) -> list[UnitPrices]:
        found = [self.exact[target_id]] if target_id in self.exact else []
        return found + [v for pat, v in self.globs if fnmatch.fnmatchcase(target_id, pat)]


@functools.cache
def bundled_table() -> dict[str, dict[str, Any]]:
    """The price table shipped in the package (usage/prices.json): "provider/model" -> entry. Entries may
    also say context_length, modalities_in/out and created, which the model catalog reads."""
    raw = importlib.resources.files("portway.usage").joinpath("prices.json").read_text("utf-8")
    models: dict[str, dict[str, Any]] = json.loads(raw)["models"]
    return models


class Pricing:
    def __init__(
        self,
        prices: Mapping[str, PriceEntry],
        free_providers: Collection[str] = (),
        table: Mapping[str, PriceEntry] | None = None,
    ) -> None:
        self._free = frozenset(free_providers)
        self._config = _Layer(prices)
        self._listed: dict[str, UnitPrices] = {}
        self._table = _Layer(table or {})
        self._cache: dict[str, UnitPrices] = {}

    def set_listed(self, listed: Mapping[str, UnitPrices]) -> None:
        """The providers' own prices ("provider/model" -> prices), from the catalog's latest merge."""
        self._listed = dict(listed)
        self._cache = {}  # a new dict, not clear(): a lookup in flight keeps a consistent view

    def prices(self, target_id: str) -> UnitPrices:
        """Every price of one target (see the module's docstring for the order of the sources)."""
        found = self._cache.get(target_id)
        if found is not None:
            return found
        listed = self._listed.get(target_id)
        layers = [
            self._config.matching(target_id),
            [listed] if listed is not None else [],
            self._table.matching(target_id),
        ]
        free = target_id.partition("/")[0] in self._free
        resolved: dict[str, Any] = dict.fromkeys(_TOKEN_FIELDS)
        priced = next((layer for layer in layers if any(e.tokens is not None for e in layer)), None)
        if priced is not None:
            for name in _TOKEN_FIELDS:
                resolved[name] = next((_get(e, name) for e in priced if _get(e, name) is not None), None)
        every = [e for layer in layers for e in layer]
        for name in _MEDIA_FIELDS:
            resolved[name] = next((_get(e, name) for e in every if _get(e, name) is not None), None)
        if free:
            resolved = {k: getattr(_ALL_FREE, k) if v is None else v for k, v in resolved.items()}
        found = UnitPrices(**resolved)
        if len(self._cache) < 10_000:  # direct provider/model ids are client-chosen: keep the cache bounded
            self._cache[target_id] = found
        return found

    def price(self, target_id: str) -> Price | None:
        """(input, output) per 1M tokens; None: unpriced."""
        return self.prices(target_id).tokens

    def cost(
        self, target_id: str, prompt_tokens: int, completion_tokens: int, cached: int = 0, reasoning: int = 0
    ) -> float:
        """Cached tokens are part of the prompt and reasoning tokens part of the completion: each is priced
        at its own price where one is listed, the rest at input / output."""
        p = self.prices(target_id)
        inp, out = p.tokens or _FREE
        cached = min(max(cached, 0), prompt_tokens)
        reasoning = min(max(reasoning, 0), completion_tokens)
        total = (prompt_tokens - cached) * inp + cached * (inp if p.cached_input is None else p.cached_input)
        total += (completion_tokens - reasoning) * out
        total += reasoning * (out if p.reasoning is None else p.reasoning)
        return total / 1_000_000

    def usage_cost(self, target_id: str, usage: Usage) -> float:
        return self.cost(
            target_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens,
        )

    def estimate(self, target_ids: Sequence[str], prompt_tokens: int, completion_tokens: int) -> float:
        """The most any of the targets could cost: fallbacks may land on the dearest one."""
        if len(target_ids) == 1:
            return self.cost(target_ids[0], prompt_tokens, completion_tokens)
        return max((self.cost(t, prompt_tokens, completion_tokens) for t in target_ids), default=0.0)

    def media_cost(self, target_id: str, units: MediaUnits) -> float:
        """What a media call spent: every unit it reports at its own price (unpriced units cost $0)."""
        p = self.prices(target_id)
        cost = units.prompt_tokens * (p.tokens or _FREE)[0] / 1_000_000
        if units.images and p.image is not None:
            cost += units.images * image_price(p.image, units.image_size)
        cost += units.characters * (p.characters or 0.0) / 1_000_000
        cost += units.audio_seconds / 60 * (p.audio_minute or 0.0)
        cost += units.video_seconds * (p.video_second or 0.0)
        return cost

    def media_estimate(self, target_ids: Sequence[str], units: MediaUnits) -> float:
        """The most the units could cost on any of the targets (admission reserves it)."""
        return max((self.media_cost(t, units) for t in target_ids), default=0.0)


def listed_prices(
    input: float | None, cached_input: float | None, output: float | None, reasoning: float | None
) -> UnitPrices | None:
    """A provider's listed token prices as UnitPrices (None when it listed none)."""
    if input is None and output is None:
        return None
    return UnitPrices((input or 0.0, output or 0.0), cached_input=cached_input, reasoning=reasoning)


COST_HEADER = "x-portway-cost-usd"


def cost_header(cost: float) -> str:
    """The header's value: USD with 8 decimals (a millionth of a cent), never an exponent."""
    return f"{cost:.8f}"


def image_price(price: ImagePrice, size: str | None) -> float:
    """Per image at `size`: a flat price, else the size's own entry, then the first glob that matches
    (`*` for every other size, also an unknown one); no match: the dearest listed size, since a client must
    not make its images free by asking for a size nobody priced."""
    if not isinstance(price, Mapping):
        return price
    key = size or ""
    if key in price and not _is_glob(key):
        return price[key]
    glob = next((v for pat, v in price.items() if _is_glob(pat) and fnmatch.fnmatchcase(key, pat)), None)
    return glob if glob is not None else max(price.values(), default=0.0)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


# -- estimates, for usage the upstream did not report ------------------------------------------------------
# An upstream that received a prompt may bill it even if it never said so (a client that hung up before the
# usage chunk, a cut stream, a provider asked for no stream usage): such usage is estimated, recorded as
# estimated and settled into limits and budgets like real usage, never counted as $0.

BYTES_PER_TOKEN = 4

# `content":` also finds "reasoning_content" (billed as completion); `\"` inside a JSON string never matches.
_CONTENT = b'content":'
_CONTENT_LEN = len(_CONTENT)
_ARGUMENTS = b'arguments":'
_BACKSLASH = 92


def prompt_tokens_estimate(body_bytes: int) -> int:
    """The prompt's tokens from the size of the request body (what admission reserves, too)."""
    return body_bytes // BYTES_PER_TOKEN + 1


def completion_tokens_estimate(chars: int, chunks: int) -> int:
    """Completion tokens from delivered text: characters / 4, and at least one per chunk that had text."""
    return max(-(-chars // BYTES_PER_TOKEN), chunks)


def _string_end(data: bytes, quote: int) -> int:
    """Index of the quote that ends the JSON string whose opening quote is at `quote` (-1: unterminated)."""
    end = data.find(b'"', quote + 1)
    while end != -1 and data[end - 1] == _BACKSLASH:
        run = end - 1
        while data[run] == _BACKSLASH:
            run -= 1
        if (end - 1 - run) % 2 == 0:  # an even run of backslashes escapes itself, not the quote
            break
        end = data.find(b'"', end + 1)
    return end


def _marker_chars(data: bytes, marker: bytes, i: int) -> int:
    """Total length of the JSON string values after each `marker` from `i` on (null and numbers: 0)."""
    total = 0
    skip = len(marker)
    while i != -1:
        i += skip
        if data[i : i + 1] == b" ":  # `"key": "value"` from servers that pretty-print
            i += 1
        if data[i : i + 1] == b'"':
            end = data.find(b'"', i + 1)
            if end != -1 and data[end - 1] == _BACKSLASH:
                end = _string_end(data, i)
            if end == -1:
                break
            total += end - i - 1
            i = end
        i = data.find(marker, i)
    return total


def text_chars(event: bytes) -> int:
    """Characters of generated text (content, reasoning, tool-call arguments) in one SSE chunk, found by
    searching bytes: it runs for every relayed event, where decoding JSON and walking the result costs
    several times as much. Escapes count as their encoded length (errs towards charging more).
    """
    i = event.find(_CONTENT)
    if i != -1:
        start = i + _CONTENT_LEN
        if event[start : start + 1] == b'"':  # the common chunk: one text field, its end not escaped
            end = event.find(b'"', start + 1)
            if end != -1 and event[end - 1] != _BACKSLASH and event.find(_CONTENT, end) == -1:
                return end - start - 1
        n = _marker_chars(event, _CONTENT, i)
        if n:
            return n
    # A chunk with text has no tool-call arguments: they are searched for only when there is none.
    i = event.find(_ARGUMENTS)
    return 0 if i == -1 else _marker_chars(event, _ARGUMENTS, i)


def body_text_chars(body: bytes) -> int:
    """Characters of generated text in a whole chat.completion body (its messages may hold both text and
    tool calls)."""
    n = 0
    for marker in (_CONTENT, _ARGUMENTS):
        i = body.find(marker)
        if i != -1:
            n += _marker_chars(body, marker, i)
    return n


# -- a media request's units before the call (admission reserves their price) ---------------------------

# Transcription: the length of the audio is unknown until the upstream has decoded it; 16,000 bytes a second
# is a 128 kbit/s MP3 (the usual upload). WAV overestimates, low-bitrate Opus underestimates; the upstream's
# reported duration settles it when there is one.
AUDIO_BYTES_PER_SECOND = 16_000
DEFAULT_VIDEO_SECONDS = 4.0  # OpenAI's default `seconds` for POST /v1/videos


def estimate_units(task: Task, payload: Mapping[str, Any], upload_bytes: int = 0) -> MediaUnits:
    """What a media request will likely spend, from the request alone (already validated by the API, but
    tolerant of anything: an odd field estimates as its default)."""
    if task is Task.EMBEDDINGS:
        return MediaUnits(prompt_tokens=_input_tokens(payload.get("input")))
    if task in (Task.IMAGE_GENERATION, Task.IMAGE_EDIT):
        n = payload.get("n")
        size = payload.get("size")
        images = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        return MediaUnits(images=images, image_size=size if isinstance(size, str) else None)
    if task is Task.SPEECH:
        text = payload.get("input")
        return MediaUnits(characters=len(text) if isinstance(text, str) else 0)
    if task in (Task.TRANSCRIPTION, Task.TRANSLATION):
        return MediaUnits(audio_seconds=max(upload_bytes, 0) / AUDIO_BYTES_PER_SECOND)
    if task is Task.VIDEO:
        return MediaUnits(video_seconds=_seconds(payload.get("seconds")))
    return MediaUnits()


def _input_tokens(value: object) -> int:
    """Embeddings input: a string (UTF-8 bytes ÷ 4 + 1, like a chat prompt), a token array (its length), or
    a list of either."""
    if isinstance(value, str):
        return len(value.encode()) // BYTES_PER_TOKEN + 1
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_input_tokens(v) for v in value)
    return 0


def _seconds(value: object) -> float:
    """OpenAI sends `seconds` as a string ("4", "8", "12"); numbers are taken as they are."""
    try:
        seconds = float(value) if isinstance(value, str | int | float) else DEFAULT_VIDEO_SECONDS
    except ValueError:
        return DEFAULT_VIDEO_SECONDS
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_VIDEO_SECONDS
