"""What a provider says about its models: the model catalog's raw material (services/catalog.py merges it).

`parse_model_list` is pure and reads every shape portway meets at an OpenAI-compatible `GET /models`:
OpenAI's own (id, created, owned_by), OpenRouter's (per-token `pricing` strings, `context_length`,
`architecture.modality` / `input_modalities` / `output_modalities`) and Hugging Face's router (a
`providers` list, each with its own `pricing` per 1M tokens and `context_length`). Prices come out in USD
per 1M tokens whatever the source said.

The native lists come a page at a time, each page a `ListedPage` (its models and the cursor of the next):
`parse_anthropic_models` reads Anthropic's `GET /v1/models` (`data`, `has_more`, `last_id`; `created_at` in
RFC 3339) and `parse_gemini_models` Gemini's `GET /{version}/models` (`models`, `nextPageToken`; only the
models that answer `generateContent`: embedding-only models are skipped, since the gemini type serves chat
only). The providers' IO walks the pages (openai_compat.collect_pages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

MAX_MODELS = 5000  # one provider's list is bounded: a broken or hostile upstream cannot fill the catalog
_MAX_ID = 200
_MAX_CURSOR = 1000  # a page cursor longer than this is no cursor: the listing ends there
_CLAUDE_IN = ("text", "image")
_GEMINI_IN = ("text", "image", "audio")  # what gemini_translate sends a Gemini model


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One model as its provider lists it; None: the provider did not say."""

    model: str  # the provider's own id (the catalog's id is "provider/model")
    created: int | None = None
    modalities_in: tuple[str, ...] = ("text",)
    modalities_out: tuple[str, ...] = ("text",)
    context_length: int | None = None
    input: float | None = None  # USD per 1M prompt tokens
    cached_input: float | None = None  # USD per 1M prompt tokens read from the provider's cache
    output: float | None = None  # USD per 1M completion tokens
    reasoning: float | None = None  # USD per 1M reasoning tokens (else they cost `output`)
    free: bool | None = None  # the provider says so (OpenRouter's `:free` variants)


@dataclass(frozen=True, slots=True)
class ListedPage:
    """One page of a paged list: its models, and the cursor of the next page (None: the last)."""

    models: list[ListedModel]
    next: str | None = None


def parse_model_list(obj: Any) -> list[ListedModel]:
    """The models of a `/models` answer (`{"data": [...]}` or a bare list); entries it cannot read are
    skipped, never an error: one odd model must not cost the catalog the provider's other models."""
    items = obj.get("data") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        return []
    out: list[ListedModel] = []
    for item in items[:MAX_MODELS]:
        model = _listed(item)
        if model is not None:
            out.append(model)
    return out


def parse_anthropic_models(obj: Any) -> ListedPage:
    """A page of Anthropic's `GET /v1/models`: `{"data": [{"type": "model", "id", "display_name",
    "created_at"}], "has_more", "first_id", "last_id"}`. Every Claude model reads text and images; a
    `capabilities.image_input.supported: false` says otherwise, `max_input_tokens` (when sent) is the
    context length."""
    if not isinstance(obj, dict) or not isinstance(items := obj.get("data"), list):
        return ListedPage([])
    out: list[ListedModel] = []
    for item in items[:MAX_MODELS]:
        if not isinstance(item, dict) or item.get("type", "model") != "model":
            continue
        if not _valid_id(item.get("id")):
            continue
        caps = item.get("capabilities")
        image = caps.get("image_input") if isinstance(caps, dict) else None
        text_only = isinstance(image, dict) and image.get("supported") is False
        ins = ("text",) if text_only else _CLAUDE_IN
        created = _rfc3339(item.get("created_at"))
        out.append(ListedModel(item["id"], created, ins, context_length=_int(item.get("max_input_tokens"))))
    return ListedPage(out, _cursor(obj.get("last_id")) if obj.get("has_more") is True else None)


def parse_gemini_models(obj: Any) -> ListedPage:
    """A page of Gemini's `GET /{version}/models`: `{"models": [{"name": "models/…", "inputTokenLimit",
    "supportedGenerationMethods": [...]}], "nextPageToken"}`; the id is the name without `models/`, the
    context length `inputTokenLimit`. Gemini models read text, images and audio; others (Gemma...) text."""
    if not isinstance(obj, dict) or not isinstance(items := obj.get("models"), list):
        return ListedPage([])
    out: list[ListedModel] = []
    for item in items[:MAX_MODELS]:
        if not isinstance(item, dict):
            continue
        methods = item.get("supportedGenerationMethods")
        if not isinstance(methods, list) or "generateContent" not in methods:
            continue  # embeddings, AQA, Imagen...: nothing the gemini type serves
        name = item.get("name")
        mid = name.removeprefix("models/") if isinstance(name, str) else None
        if not _valid_id(mid) or "/" in mid:
            continue
        ins = _GEMINI_IN if mid.startswith("gemini-") else ("text",)
        out.append(ListedModel(mid, modalities_in=ins, context_length=_int(item.get("inputTokenLimit"))))
    return ListedPage(out, _cursor(obj.get("nextPageToken")))


def _valid_id(mid: Any) -> TypeGuard[str]:
    return isinstance(mid, str) and 0 < len(mid) <= _MAX_ID and mid.isprintable()


def _cursor(value: Any) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= _MAX_CURSOR and value.isprintable()
    return value if ok else None


def _rfc3339(value: Any) -> int | None:
    """Unix seconds of an RFC 3339 time ("2025-02-19T00:00:00Z"); one without a zone is taken as UTC."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    seconds = int(when.timestamp())
    return seconds if seconds > 0 else None


def _listed(item: Any) -> ListedModel | None:
    if not isinstance(item, dict):
        return None
    mid = item.get("id")
    if not _valid_id(mid):
        return None
    created = item.get("created")
    inputs, outputs = _modalities(item.get("architecture"))
    context = _int(item.get("context_length"))
    prices = _openrouter_prices(item.get("pricing"))
    hub = _hf_provider(item.get("providers"))
    if hub is not None:  # Hugging Face: the first live inference provider's terms
        context = context or _int(hub.get("context_length"))
        if prices == (None, None, None, None):
            prices = _per_million(hub.get("pricing"))
    inp, cached, out, reasoning = prices
    free = True if mid.endswith(":free") or (inp == 0 and out == 0) else None
    return ListedModel(
        mid,
        created if isinstance(created, int) and not isinstance(created, bool) and created > 0 else None,
        inputs,
        outputs,
        context,
        inp,
        cached,
        out,
        reasoning,
        free,
    )


def _modalities(arch: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """OpenRouter/HF `architecture`: explicit lists first, else OpenRouter's "text+image->text"."""
    if not isinstance(arch, dict):
        return ("text",), ("text",)
    ins, outs = _names(arch.get("input_modalities")), _names(arch.get("output_modalities"))
    modality = arch.get("modality")
    if (not ins or not outs) and isinstance(modality, str) and "->" in modality:
        left, _, right = modality.partition("->")
        ins = ins or _names(left.split("+"))
        outs = outs or _names(right.split("+"))
    return ins or ("text",), outs or ("text",)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(dict.fromkeys(v.strip().lower() for v in value if isinstance(v, str) and v.strip()))[:8]


def _hf_provider(providers: Any) -> dict[str, Any] | None:
    if not isinstance(providers, list):
        return None
    entries = [p for p in providers if isinstance(p, dict)]
    live = [p for p in entries if p.get("status") in (None, "live")]
    chosen = live or entries
    return chosen[0] if chosen else None


def _openrouter_prices(pricing: Any) -> tuple[float | None, ...]:
    """OpenRouter: USD per token as strings (`prompt`, `completion`, `input_cache_read`,
    `internal_reasoning`); "-1" means "varies" (a router model) and is no price."""
    if not isinstance(pricing, dict) or "prompt" not in pricing:
        return (None, None, None, None)
    names = ("prompt", "input_cache_read", "completion", "internal_reasoning")
    per_token = [_number(pricing.get(n)) for n in names]
    return tuple(None if p is None else round(p * 1_000_000, 9) for p in per_token)


def _per_million(pricing: Any) -> tuple[float | None, ...]:
    """Hugging Face's router: `{"input": 0.2, "output": 0.6}` in USD per 1M tokens."""
    if not isinstance(pricing, dict):
        return (None, None, None, None)
    return (_number(pricing.get("input")), None, _number(pricing.get("output")), None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
