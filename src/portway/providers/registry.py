"""Provider type name -> class, imported on first use.

Each class declares its own facts (type name, default base URL, whether it needs a key, whether it is free,
its options model: see `BaseProvider`); this table only says where to find it, so a type that is not
configured is never imported. The modules named here stay light: heavy engines (llama.cpp, torch) are
imported inside the code that loads a model, never at module level.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from portway.providers.base import BaseProvider, Provider, ProviderSettings

if TYPE_CHECKING:
    from portway.http.client import Transport

_TYPES: dict[str, tuple[str, str]] = {
    "openai": ("portway.providers.openai_compat", "OpenAICompatProvider"),
    "huggingface": ("portway.providers.huggingface", "HuggingFaceProvider"),
    "gemini": ("portway.providers.gemini", "GeminiProvider"),
    "anthropic": ("portway.providers.anthropic", "AnthropicProvider"),
    "local": ("portway.providers.local", "LocalProvider"),
}


def provider_types() -> list[str]:
    return sorted(_TYPES)


@functools.cache
def provider_class(type_name: str) -> type[BaseProvider]:
    """The class for a `type:` of gateway.yaml; ValueError naming the known types for any other."""
    try:
        module_name, class_name = _TYPES[type_name]
    except KeyError:
        known = ", ".join(provider_types())
        raise ValueError(f"unknown provider type {type_name!r} (known types: {known})") from None
    cls: type[BaseProvider] = getattr(importlib.import_module(module_name), class_name)
    if cls.type_name != type_name:  # the table and the class must agree: the class is the truth
        raise RuntimeError(f"{module_name}.{class_name} declares type {cls.type_name!r}, not {type_name!r}")
    return cls


def create_provider(settings: ProviderSettings, transport: Transport) -> Provider:
    return provider_class(settings.type)(settings, transport)
