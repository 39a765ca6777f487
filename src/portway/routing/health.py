"""Passive provider health: what real traffic says about each provider, key and model (this worker's view).

The attempt loop calls `Health.observe` once per upstream attempt result. It is O(1) and allocates nothing
but the numbers it stores: each series (a provider, a key by its pool label, a model of a provider) is a
fixed ring of the last `RING` outcomes, overwritten in place. Reading (`Health.provider`, `.key`,
`.models`) happens only for the status endpoints: it keeps the samples of the last `window` seconds and
sorts a copy for the latency percentiles.

Outcomes (the attempt's kind): "ok" is a success; "bad_request" and "forbidden" mean the upstream answered
and accepted the key (the request, not the provider, was at fault), so they count as healthy; every other
failure kind counts against the success rate; "deadline" (the request ran out of time) and "skipped"
(no attempt was made) say nothing about the upstream and are not recorded. Latency percentiles are of
successful attempts only (for a stream: the time to its first event).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

RING = 256  # outcomes kept per series; the window then picks the recent ones
MAX_MODELS = 256  # model series per provider: a client may name any model, so the map must stay bounded
_HEALTHY = frozenset({"ok", "bad_request", "forbidden"})
_UNRECORDED = frozenset({"deadline", "skipped"})
_NO_ERROR = frozenset({"ok", "bad_request"})  # the client's own 400s are not the provider's last error


@dataclass(slots=True, frozen=True)
class LastError:
    kind: str  # a FailureKind value
    status: int | None  # the upstream's HTTP status, when it answered
    at: float  # wall-clock seconds
    message: str  # the attempt's client-safe message (callers mask it again before showing it)


@dataclass(slots=True, frozen=True)
class Stats:
    """One series over the window."""

    requests: int  # attempts in the window
    success_rate: float | None  # None without attempts in the window
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    total: int  # attempts since the worker started
    last_error: LastError | None
    last_seen: float | None  # wall-clock seconds of the latest attempt
    last_ok: float | None  # ... of the latest healthy one


class Series:
    __slots__ = ("at", "count", "last_error", "last_ok", "last_seen", "latency", "ok", "pos", "total")

    def __init__(self) -> None:
        self.at = [0.0] * RING
        self.ok = [False] * RING
        self.latency = [-1.0] * RING  # -1: not a success, no latency to count
        self.pos = 0
        self.count = 0
        self.total = 0
        self.last_error: LastError | None = None
        self.last_seen = 0.0
        self.last_ok = 0.0

    def add(self, now: float, ok: bool, latency_ms: float) -> None:
        i = self.pos
        self.at[i] = now
        self.ok[i] = ok
        self.latency[i] = latency_ms
        self.pos = i + 1 if i + 1 < RING else 0
        if self.count < RING:
            self.count += 1
        self.total += 1
        self.last_seen = now
        if ok:
            self.last_ok = now

    def stats(self, since: float) -> Stats:
        at, ok, latency = self.at, self.ok, self.latency
        recent = [i for i in range(self.count) if at[i] >= since]
        good = sum(1 for i in recent if ok[i])
        times = sorted(latency[i] for i in recent if latency[i] >= 0)
        return Stats(
            requests=len(recent),
            success_rate=good / len(recent) if recent else None,
            latency_ms_p50=percentile(times, 0.5),
            latency_ms_p95=percentile(times, 0.95),
            total=self.total,
            last_error=self.last_error,
            last_seen=self.last_seen or None,
            last_ok=self.last_ok or None,
        )


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 2)


class Health:
    """Rolling health of every provider, key (by label: "groq#2", never the key) and model."""

    def __init__(self, window: float = 300.0, *, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self._providers: dict[str, Series] = {}
        self._keys: dict[str, Series] = {}
        self._models: dict[str, dict[str, Series]] = {}

    def observe(
        self,
        provider: str,
        model: str,
        key: str | None,
        kind: str,
        status: int | None,
        latency_ms: float,
        message: str = "",
    ) -> None:
        """One attempt's result (`key` is the key's pool label). Called on the hot path: keep it O(1)."""
        if kind in _UNRECORDED:
            return
        now = self.clock()
        ok = kind in _HEALTHY
        latency = latency_ms if kind == "ok" else -1.0
        error = None if kind in _NO_ERROR else LastError(kind, status, now, message)
        series = self._providers.get(provider)
        if series is None:
            series = self._providers[provider] = Series()
            self._models[provider] = {}
        series.add(now, ok, latency)
        if error is not None:
            series.last_error = error
        models = self._models[provider]
        series = models.get(model)
        if series is None and len(models) < MAX_MODELS:
            series = models[model] = Series()
        if series is not None:
            series.add(now, ok, latency)
            if error is not None:
                series.last_error = error
        if key is not None:
            series = self._keys.get(key)
            if series is None:
                series = self._keys[key] = Series()
            series.add(now, ok, latency)
            if error is not None:
                series.last_error = error

    def _since(self) -> float:
        return self.clock() - self.window

    def provider(self, name: str) -> Stats | None:
        series = self._providers.get(name)
        return None if series is None else series.stats(self._since())

    def key(self, label: str) -> Stats | None:
        series = self._keys.get(label)
        return None if series is None else series.stats(self._since())

    def models(self, provider: str) -> dict[str, Stats]:
        since = self._since()
        return {model: s.stats(since) for model, s in sorted(self._models.get(provider, {}).items())}
