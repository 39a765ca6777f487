"""Passive health (routing/health.py) and the status verdicts (services/status.py), without a network:
a fake clock, real key pools and breakers, a real SQLite database for the uptime rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portway.config import RoutingConfig, StatusConfig
from portway.errors import UpstreamError
from portway.providers.base import ChatCall, Completion, FailureKind, UpstreamFailure, Usage
from portway.routing import health as health_mod
from portway.routing.attempts import AttemptRunner
from portway.routing.health import Health, percentile
from portway.routing.keypool import KeyPool
from portway.routing.router import Target
from portway.services.status import StatusService, fingerprint, mask
from portway.stores.sql.database import Database
from portway.stores.sql.status import StatusStore

SECRET = "sk-live-0123456789abcdefSECRET"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_success_rate_percentiles_and_last_error() -> None:
    clock = Clock()
    h = Health(window=60, clock=clock)
    for ms in (10.0, 20.0, 30.0, 40.0):
        h.observe("p", "m", "p#1", "ok", 200, ms)
    h.observe("p", "m", "p#1", "server", 503, 5.0, "upstream returned HTTP 503")
    stats = h.provider("p")
    assert stats is not None
    assert stats.requests == 5 and stats.success_rate == pytest.approx(0.8)
    assert stats.latency_ms_p50 == 20.0 and stats.latency_ms_p95 == 40.0  # failures carry no latency
    assert stats.last_error is not None and (stats.last_error.kind, stats.last_error.status) == (
        "server",
        503,
    )
    key = h.key("p#1")
    assert key is not None and key.requests == 5
    assert h.models("p")["m"].success_rate == pytest.approx(0.8)


def test_window_drops_old_attempts_and_unrecorded_kinds() -> None:
    clock = Clock()
    h = Health(window=60, clock=clock)
    h.observe("p", "m", "p#1", "server", 500, 1.0)
    clock.t += 61
    h.observe("p", "m", "p#1", "ok", 200, 1.0)
    h.observe("p", "m", "p#1", "deadline", None, 1.0)  # the request's deadline: no verdict
    h.observe("p", "m", "p#1", "bad_request", 400, 1.0, "client error")  # answered: healthy, not an error
    stats = h.provider("p")
    assert stats is not None
    assert stats.requests == 2 and stats.success_rate == 1.0 and stats.total == 3
    assert stats.last_error is not None and stats.last_error.kind == "server"  # the 400 did not replace it


def test_ring_and_model_map_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_mod, "MAX_MODELS", 3)
    h = Health(window=1e9, clock=Clock())
    for i in range(health_mod.RING + 10):
        h.observe("p", f"m{i % 5}", None, "ok", 200, float(i))
    stats = h.provider("p")
    assert stats is not None and stats.requests == health_mod.RING and stats.total == health_mod.RING + 10
    assert sorted(h.models("p")) == ["m0", "m1", "m2"]  # a client naming new models cannot grow the map


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


class Fake:
    """A provider at the seam: each call pops its next outcome ('ok' or a FailureKind)."""

    name = "p"

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.probe_failure: UpstreamFailure | None = None

    async def chat(self, call: ChatCall) -> Completion:
        step = self.steps.pop(0) if self.steps else "ok"
        if step == "ok":
            return Completion(b'{"choices":[]}', Usage(1, 1), call.model)
        raise UpstreamFailure(
            step, f"upstream said {SECRET}", status=500 if step is FailureKind.SERVER else 401
        )

    async def probe(self, key: str | None, timeout: float) -> bool:
        if self.probe_failure is not None:
            raise self.probe_failure
        return True


async def _service(tmp_path: Path, pool: KeyPool, provider: Fake, **cfg: Any) -> StatusService:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'status.db'}")
    await db.migrate()
    h = Health(window=300)
    return StatusService(StatusConfig(**cfg), h, {"p": provider}, {"p": pool}, StatusStore(db.engine))  # type: ignore[dict-item]


async def test_attempts_feed_health_and_breaker_drives_status(tmp_path: Path) -> None:
    pool = KeyPool("p", [SECRET], breaker_threshold=2, breaker_cooldown=30)
    fake = Fake([FailureKind.SERVER] * 4)
    svc = await _service(tmp_path, pool, fake)
    rc = RoutingConfig(retries_per_target=1, backoff_base=0, backoff_max=0)
    runner = AttemptRunner({"p": fake}, {"p": pool}, rc, health=svc.health)  # type: ignore[dict-item]
    assert (await svc.summary())["providers"][0]["status"] == "up"  # nothing known against it
    with pytest.raises(UpstreamError):
        await runner.run([Target("p", "m")], {"messages": []}, False)
    detail = await svc.detail()
    prov = detail["providers"][0]
    assert prov["status"] == "down" and detail["status"] == "down"
    assert prov["keys"][0]["breaker"] == "open" and prov["keys"][0]["fingerprint"] == fingerprint(SECRET)
    assert prov["models"][0]["model"] == "m" and prov["models"][0]["success_rate"] == 0.0
    assert prov["last_error"]["kind"] == "server" and prov["last_error"]["status"] == 500
    assert SECRET not in str(detail) and SECRET not in str(await svc.summary())
    await svc.store.engine.dispose()


async def test_cooldown_is_degraded_and_rejected_keys_down(tmp_path: Path) -> None:
    pool = KeyPool("p", ["k1", "k2"], breaker_threshold=5, breaker_cooldown=30)
    svc = await _service(tmp_path, pool, Fake([]))
    now = svc.monotonic()
    pool.report(pool.states[0], FailureKind.RATE_LIMIT, now, 60.0)
    detail = await svc.detail()
    assert detail["providers"][0]["status"] == "degraded"
    assert detail["providers"][0]["keys"][0]["cooldown_until"] is not None
    for state in pool.states:
        pool.report(state, FailureKind.AUTH, now, None)
    detail = await svc.detail()
    assert detail["providers"][0]["status"] == "down"
    assert all(k["set_aside"] for k in detail["providers"][0]["keys"])
    await svc.store.engine.dispose()


async def test_probe_result_is_recorded_as_uptime(tmp_path: Path) -> None:
    pool = KeyPool("p", ["k1"], breaker_threshold=5, breaker_cooldown=30)
    fake = Fake([])
    svc = await _service(tmp_path, pool, fake, probe_interval_seconds=60)
    await svc.check()
    summary = await svc.summary()
    assert summary["providers"][0]["uptime"]["1h"] == 100.0 and summary["providers"][0]["last_checked"]
    # A second worker in the same slot finds it taken and neither probes nor writes.
    fake.probe_failure = UpstreamFailure(FailureKind.SERVER, "down", status=503)
    other = StatusService(svc.cfg, Health(), {"p": fake}, {"p": pool}, svc.store)  # type: ignore[dict-item]
    await other.check()
    assert "p" not in other.probes
    uptime = await svc.store.uptime(svc.clock())
    assert uptime["p"].percent == {"1h": 100.0, "24h": 100.0, "7d": 100.0}
    await svc.store.engine.dispose()


def test_mask_hides_keys_tokens_and_url_credentials() -> None:
    token = "abcdefghijklmnopqrstuvwxyz0123456789"
    text = f"failed: https://user:pw@example.com/v1 with {SECRET} and Bearer {token}"
    masked = mask(text, ["unlisted-key"])
    assert "pw@" not in masked and SECRET not in masked and token not in masked
    assert mask("secret-xyz inside", ["secret-xyz"]) == "*** inside"
