"""Provider type name -> class. Classes are imported lazily so an unused type costs nothing at start."""

from __future__ import annotations

import importlib
from typing import Any

from portway.http.client import Transport
from portway.providers.base import Provider, ProviderSettings

_TYPES: dict[str, tuple[str, str]] = {
    "openai": ("portway.providers.openai_compat", "OpenAICompatProvider"),
    "huggingface": ("portway.providers.huggingface", "HuggingFaceProvider"),
    "local": ("portway.providers.local", "LocalProvider"),
}


def provider_types() -> list[str]:
    return sorted(_TYPES)


def create_provider(settings: ProviderSettings, transport: Transport) -> Provider:
    module_name, class_name = _TYPES[settings.type]
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    if getattr(cls, "needs_key", True):
        return cls(settings, transport)  # type: ignore[no-any-return]
    return cls(settings)  # type: ignore[no-any-return]
