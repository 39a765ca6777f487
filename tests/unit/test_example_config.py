"""gateway.example.yaml is the configuration reference users copy: it must parse and show every setting."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from portway.config import (
    FilesConfig,
    HistoryConfig,
    LimitsConfig,
    LimitSpecConfig,
    MetricsConfig,
    PriceConfig,
    ProviderConfig,
    RoutingConfig,
    ServerConfig,
    TracingConfig,
    TransportConfig,
    VideosConfig,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "gateway.example.yaml"


def _keys(tree: object) -> set[str]:
    if isinstance(tree, dict):
        return set(map(str, tree)) | {k for v in tree.values() for k in _keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in _keys(v)}
    return set()


def test_example_parses() -> None:
    cfg = parse_config(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE), env={"GROQ_API_KEY": "k"})
    assert "groq" in cfg.enabled_providers()


def test_example_shows_every_setting() -> None:
    shown = _keys(yaml.safe_load(EXAMPLE.read_text()))
    models: list[type[BaseModel]] = [
        ServerConfig,
        RoutingConfig,
        TransportConfig,
        FilesConfig,
        VideosConfig,
        HistoryConfig,
        MetricsConfig,
        TracingConfig,
        LimitsConfig,
        LimitSpecConfig,
        PriceConfig,
        ProviderConfig,
    ]
    missing = {f"{m.__name__}.{name}" for m in models for name in m.model_fields if name not in shown}
    assert not missing, f"gateway.example.yaml lacks: {sorted(missing)}"
