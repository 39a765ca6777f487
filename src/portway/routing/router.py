"""Model name -> ordered targets. An alias names a fallback chain; `provider/model` goes direct."""

from __future__ import annotations

from dataclasses import dataclass, field

from portway.config import GatewayConfig
from portway.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str
    id: str = field(init=False, compare=False, repr=False)  # "provider/model", used several times a request

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.provider}/{self.model}")

    @classmethod
    def parse(cls, spec: str) -> Target:
        provider, _, model = spec.partition("/")  # split at the first "/": model ids may contain more
        return cls(provider, model)


class Router:
    def __init__(self, cfg: GatewayConfig) -> None:
        self._enabled = set(cfg.enabled_providers())
        # Targets on a provider without keys are dropped; the alias stays so the error says why.
        self.aliases: dict[str, tuple[Target, ...]] = {
            alias: tuple(dict.fromkeys(t for t in map(Target.parse, specs) if t.provider in self._enabled))
            for alias, specs in cfg.models.items()
        }
        self._direct: dict[str, tuple[Target, ...]] = {}  # "provider/model" names clients used
        self._listed: dict[str, Target] = {}
        for targets in self.aliases.values():
            for t in targets:
                self._listed.setdefault(t.id, t)
        for name, provider in cfg.providers.items():
            if name in self._enabled:
                for model in provider.models:
                    t = Target(name, model)
                    self._listed.setdefault(t.id, t)

    def resolve(self, model: str) -> tuple[Target, ...]:
        targets = self.aliases.get(model)
        if targets is not None:
            return targets
        targets = self._direct.get(model)
        if targets is not None:
            return targets
        provider, sep, rest = model.partition("/")
        if sep and rest and provider in self._enabled:
            if len(self._direct) >= 10_000:  # names are client-chosen: keep the cache bounded
                self._direct.clear()
            targets = self._direct[model] = (Target(provider, rest),)
            return targets
        raise ModelNotFound(f"The model {model!r} does not exist", param="model")

    def plan(self, model: str, fallbacks: list[str] | None = None) -> list[Target]:
        """Targets for `model`, then for each of the request's `models` fallbacks, without repeats."""
        if not fallbacks:
            return list(self.resolve(model))  # aliases are de-duplicated above
        seen: dict[Target, None] = {}
        for name in [model, *(fallbacks or [])]:
            for t in self.resolve(name):
                seen.setdefault(t, None)
        return list(seen)

    def model_ids(self) -> list[tuple[str, str]]:
        """(id, owned_by) for /v1/models: aliases first, then every reachable provider/model."""
        ids = [(alias, "portway") for alias in self.aliases]
        ids += [(t.id, t.provider) for t in self._listed.values() if t.id not in self.aliases]
        return ids
