"""What a provider says about its models: the model catalog's raw material (services/catalog.py merges it).

`parse_model_list` is pure and reads every shape portway meets at an OpenAI-compatible `GET /models`:
OpenAI's own (id, created, owned_by), OpenRouter's (per-token `pricing` strings, `context_length`,
`architecture.modality` / `input_modalities` / `output_modalities`) and Hugging Face's router (a
`providers` list, each with its own `pricing` per 1M tokens and `context_length`). Prices come out in USD
per 1M tokens whatever the source said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_MODELS = 5000  # one provider's list is bounded: a broken or hostile upstream cannot fill the catalog
_MAX_ID = 200


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


def _listed(item: Any) -> ListedModel | None:
    if not isinstance(item, dict):
        return None
    mid = item.get("id")
    if not isinstance(mid, str) or not mid or len(mid) > _MAX_ID or not mid.isprintable():
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
