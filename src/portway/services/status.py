"""Provider status: GET /v1/status (public summary), GET /admin/status (detail); `rt.status` on the Runtime.

Three sources, combined per provider:
- passive health (routing/health.py): success rate, latency and last error of real traffic, per provider,
  key and model, in this worker;
- the key pools (routing/keypool.py): each key's breaker (closed, open, half-open), 429 cool-down, in-flight
  count and whether it is set aside after a 401;
- active probes (optional, `status.probe_interval_seconds`): each provider's `probe()` (by default its model
  list) with its first key not set aside, at most `status.probe_timeout`.

A provider is "down" when no key can be used (every breaker open, every key rejected) or its last probe
failed with no healthy traffic since; "degraded" when some key is out, it is cooling down after 429s, its
success rate over the window is below 90 % (of at least 5 attempts) or its last probe failed though traffic
got through since; else "up". Every check interval (the probe interval, or once a minute without probes)
the status of each provider with something to go by (a probe, or traffic in that interval) is written to
the database (stores/sql/status.py), one row per slot across workers: that is the uptime's source.

Methods for other callers (the CLI's `portway status`, the compat surfaces):
- `await summary()` -> {"object": "status", "status", "providers": [{"provider", "status",
  "uptime": {"1h", "24h", "7d"} (percent or null), "last_checked" (ISO 8601 or null), "latency_ms_p50"}]}:
  safe to show anyone: no key, no fingerprint, no URL, no upstream text.
- `await detail()` -> the summary plus, per provider, success rate, p95, last error (kind, status, at,
  masked message), its probe config and last result, each key (label, fingerprint: the first 8 hex of the
  key's SHA-256, breaker, cooldown_until, in_flight, set_aside) and each model seen. For admins only.
- `await check()`: one check round now (what the background loop runs each interval).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portway.config import StatusConfig
from portway.providers.base import Provider, UpstreamFailure
from portway.routing.health import Health, LastError, Stats
from portway.routing.keypool import KeyPool, KeyState
from portway.stores.sql.status import Check, StatusStore, Uptime
from portway.tasks import stop

log = logging.getLogger("portway.status")

PASSIVE_INTERVAL = 60.0  # without probes, traffic's verdict is written this often
_KEEP = 8 * 86400.0  # checks older than this are deleted (the longest window is 7 days)
_PRUNE_EVERY = 3600.0
_UPTIME_TTL = 5.0  # /v1/status is public: the uptime query runs at most this often per worker
_DEGRADED_BELOW = 0.9
_MIN_ATTEMPTS = 5
_MAX_MESSAGE = 200
# Anything that looks like a secret in an error message: URL credentials, bearer values, long tokens.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_TOKENISH = re.compile(r"\b(?:sk|pk|hf|gsk|key)[-_][A-Za-z0-9_\-]{6,}|\b[A-Za-z0-9_\-]{32,}")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fingerprint(key: str | None) -> str | None:
    """A key's non-secret name: the first 8 hex digits of its SHA-256 (matches `sha256sum`)."""
    return None if key is None else hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(slots=True)
class ProbeResult:
    ok: bool
    at: float  # wall-clock seconds
    latency_ms: float
    kind: str | None = None  # the failure's kind
    status: int | None = None


class StatusService:
    def __init__(
        self,
        cfg: StatusConfig,
        health: Health,
        providers: Mapping[str, Provider],
        pools: Mapping[str, KeyPool],
        store: StatusStore,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.health = health
        self.providers = providers
        self.pools = pools
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        self.interval = cfg.probe_interval_seconds or PASSIVE_INTERVAL
        self.probes: dict[str, ProbeResult] = {}
        self._seen: dict[str, int] = {}  # provider -> attempts seen at the last check (traffic since?)
        self._uptime: tuple[float, dict[str, Uptime]] = (-_UPTIME_TTL, {})
        self._uptime_lock = asyncio.Lock()
        self._pruned = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- background checks ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="portway-status")

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None

    async def _loop(self) -> None:
        if self.cfg.probe_interval_seconds:
            await self._check_logged()  # a first verdict at start, not an interval later
        while True:
            now = self.clock()
            await asyncio.sleep(self.interval - now % self.interval)  # at slot starts, like the others
            await self._check_logged()

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except Exception:  # the database away, say: the next interval tries again
            log.exception("provider status check failed")

    async def check(self) -> None:
        """One round: probe (when configured) what no other worker probed in this slot, then write each
        provider's status for the slot, if there is anything to go by."""
        now = self.clock()
        slot = int(now // self.interval * self.interval)
        taken = await self.store.taken(slot, self.pools)
        probed: set[str] = set()
        if self.cfg.probe_interval_seconds:
            names = [n for n in self.pools if n not in taken]
            results = await asyncio.gather(*(self._probe(n) for n in names))
            probed = {n for n, ok in zip(names, results, strict=True) if ok}
        checks = []
        for name in self.pools:
            stats = self.health.provider(name)
            total = stats.total if stats is not None else 0
            traffic = total > self._seen.get(name, 0)
            self._seen[name] = total
            if name in taken or not (traffic or name in probed):
                continue
            probe = self.probes.get(name) if name in probed else None
            latency = probe.latency_ms if probe else (stats.latency_ms_p50 if stats else None)
            source = "probe" if probe else "traffic"
            checks.append(Check(name, slot, self.clock(), self._status(name), source, latency))
        await self.store.record(checks)
        if now - self._pruned >= _PRUNE_EVERY:
            self._pruned = now
            await self.store.prune(now - _KEEP)

    async def _probe(self, name: str) -> bool:
        """Probe one provider; False when its type has no probe (nothing was checked)."""
        provider, pool = self.providers[name], self.pools[name]
        state = next((s for s in pool.states if not s.disabled), pool.states[0])
        started = self.monotonic()
        try:
            async with asyncio.timeout(self.cfg.probe_timeout):
                if not await provider.probe(state.key, self.cfg.probe_timeout):
                    return False
        except UpstreamFailure as failure:
            result = ProbeResult(
                False, self.clock(), self._since(started), failure.kind.value, failure.status
            )
        except TimeoutError:
            result = ProbeResult(False, self.clock(), self._since(started), "timeout")
        except Exception:  # a provider's bug must not stop the other probes
            log.exception("probe of provider %s failed unexpectedly", name)
            result = ProbeResult(False, self.clock(), self._since(started), "error")
        else:
            result = ProbeResult(True, self.clock(), self._since(started))
        if not result.ok:
            log.warning("probe failed: provider=%s kind=%s status=%s", name, result.kind, result.status)
        self.probes[name] = result
        return True

    def _since(self, started: float) -> float:
        return round((self.monotonic() - started) * 1000, 2)

    # -- verdicts -------------------------------------------------------------------------------------

    def _status(self, name: str) -> str:
        now = self.monotonic()
        states = self.pools[name].states
        broken = sum(1 for s in states if not s.usable(now) and _out(s, now))
        unusable = sum(1 for s in states if not s.usable(now))
        stats = self.health.provider(name)
        probe = self.probes.get(name)
        healthy_since_probe = bool(
            probe and stats is not None and stats.last_ok is not None and stats.last_ok > probe.at
        )
        if broken == len(states) or (probe is not None and not probe.ok and not healthy_since_probe):
            return "down"
        rate = stats.success_rate if stats is not None else None
        if (
            unusable
            or (probe is not None and not probe.ok)
            or (
                rate is not None
                and stats is not None
                and stats.requests >= _MIN_ATTEMPTS
                and rate < _DEGRADED_BELOW
            )
        ):
            return "degraded"
        return "up"

    async def _uptimes(self) -> dict[str, Uptime]:
        at, cached = self._uptime
        now = self.clock()
        if now - at < _UPTIME_TTL:
            return cached
        async with self._uptime_lock:  # one query for all the callers that arrive meanwhile
            at, cached = self._uptime
            if now - at < _UPTIME_TTL:
                return cached
            try:
                cached = await self.store.uptime(now)
            except Exception:
                log.exception("cannot read provider uptime")  # a status page answers without it
            self._uptime = (self.clock(), cached)
            return cached

    def _last_checked(self, name: str, stats: Stats | None, uptime: Uptime | None) -> float | None:
        probe = self.probes.get(name)
        times = [
            t
            for t in (
                probe.at if probe else None,
                stats.last_seen if stats else None,
                uptime.last_checked if uptime else None,
            )
            if t is not None
        ]
        return max(times) if times else None

    # -- answers --------------------------------------------------------------------------------------

    def _provider_summary(self, name: str, uptimes: dict[str, Uptime]) -> dict[str, Any]:
        stats = self.health.provider(name)
        uptime = uptimes.get(name)
        p50 = stats.latency_ms_p50 if stats else None
        probe = self.probes.get(name)
        if p50 is None and probe is not None and probe.ok:
            p50 = probe.latency_ms
        return {
            "provider": name,
            "status": self._status(name),
            "uptime": dict(uptime.percent) if uptime else {"1h": None, "24h": None, "7d": None},
            "last_checked": iso(self._last_checked(name, stats, uptime)),
            "latency_ms_p50": p50,
        }

    async def summary(self) -> dict[str, Any]:
        """The public view: see the module docstring."""
        uptimes = await self._uptimes()
        providers = [self._provider_summary(name, uptimes) for name in sorted(self.pools)]
        return {
            "object": "status",
            "status": _overall(p["status"] for p in providers),
            "providers": providers,
        }

    async def detail(self) -> dict[str, Any]:
        """The admin view: see the module docstring."""
        uptimes = await self._uptimes()
        providers = []
        for name in sorted(self.pools):
            entry = self._provider_summary(name, uptimes)
            stats = self.health.provider(name)
            entry.update(_stats_json(stats))
            entry["probe"] = self._probe_json(name)
            entry["keys"] = [self._key_json(name, s) for s in self.pools[name].states]
            entry["models"] = [
                {"model": model, **_stats_json(s, self._secrets(name))}
                for model, s in self.health.models(name).items()
            ]
            entry["last_error"] = _error_json(stats.last_error if stats else None, self._secrets(name))
            providers.append(entry)
        return {
            "object": "status.detail",
            "status": _overall(p["status"] for p in providers),
            "generated_at": iso(self.clock()),
            "window_seconds": self.health.window,
            "providers": providers,
        }

    def _secrets(self, name: str) -> list[str]:
        return [s.key for s in self.pools[name].states if s.key]

    def _probe_json(self, name: str) -> dict[str, Any]:
        probe = self.probes.get(name)
        last = None
        if probe is not None:
            last = {
                "ok": probe.ok,
                "at": iso(probe.at),
                "latency_ms": probe.latency_ms,
                "kind": probe.kind,
                "status": probe.status,
            }
        return {
            "enabled": bool(self.cfg.probe_interval_seconds),
            "interval_seconds": self.cfg.probe_interval_seconds,
            "timeout_seconds": self.cfg.probe_timeout,
            "last": last,
        }

    def _key_json(self, name: str, state: KeyState) -> dict[str, Any]:
        now, wall = self.monotonic(), self.clock()
        breaker = state.breaker.state(now).replace("_", "-")
        stats = self.health.key(state.label)
        return {
            "label": state.label,
            "fingerprint": fingerprint(state.key),
            "breaker": breaker,
            "consecutive_failures": state.breaker.failures,
            "cooldown_until": iso(wall + state.cooldown_until - now) if state.cooldown_until > now else None,
            "in_flight": state.in_flight,
            "set_aside": state.disabled,  # rejected (401), re-probed at recheck_at
            "recheck_at": iso(wall + state.recheck_at - now) if state.disabled else None,
            **_stats_json(stats, self._secrets(name)),
        }


def _out(state: KeyState, now: float) -> bool:
    """Out for a reason other than a 429 cool-down: its breaker is open, or the upstream rejected it."""
    return state.disabled or not state.breaker.available(now)


def _overall(statuses: Any) -> str:
    seen = list(statuses)
    if not seen or all(s == "up" for s in seen):
        return "up"
    return "down" if all(s == "down" for s in seen) else "degraded"


def _stats_json(stats: Stats | None, secrets: list[str] | None = None) -> dict[str, Any]:
    if stats is None:
        return {"requests": 0, "success_rate": None, "latency_ms_p50": None, "latency_ms_p95": None}
    out: dict[str, Any] = {
        "requests": stats.requests,
        "success_rate": None if stats.success_rate is None else round(stats.success_rate, 4),
        "latency_ms_p50": stats.latency_ms_p50,
        "latency_ms_p95": stats.latency_ms_p95,
    }
    if secrets is not None:
        out["last_error"] = _error_json(stats.last_error, secrets)
    return out


def _error_json(error: LastError | None, secrets: list[str]) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "kind": error.kind,
        "status": error.status,
        "at": iso(error.at),
        "message": mask(error.message, secrets),
    }


def mask(text: str, secrets: list[str]) -> str:
    """An error message fit for the admin view: cut, the provider's keys and anything key- or
    credential-like replaced by ***."""
    text = text[:_MAX_MESSAGE]
    for secret in secrets:
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub("***@", text)
    return _TOKENISH.sub("***", text)
