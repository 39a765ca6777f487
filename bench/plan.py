"""How long each scenario runs: the default `make bench` (< 15 min), BENCH_QUICK=1, and env overrides.

| variable | default | meaning |
|---|---|---|
| BENCH_QUICK | 0 | 1: a smoke run of about 2 minutes (short scenarios, 200 streams, 20 s soak) |
| BENCH_SOAK_SECONDS | 600 (quick: 20) | soak length |
| BENCH_WRK_SECONDS | 6 (quick: 3) | each wrk scenario, per target |
| BENCH_STREAMS | 1000 (quick: 200) | concurrent streams in the streaming scenario |
| BENCH_LITELLM | 0 | 1: also measure LiteLLM's proxy (own venv, bench/.litellm-venv) |
| BENCH_PROFILE | 0 | 1: py-spy a portway worker under c=32 load (bench/results/profile-*.txt) |
| BENCH_LOCAL | 1 | 0: skip the local-model comparison |
| BENCH_UPLOADS | 20 (quick: 6) | 10 MiB uploads in the upload scenario (4 at a time; quick: 2) |
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


@dataclass
class Plan:
    quick: bool
    wrk_seconds: float
    warmup_seconds: float
    ttft_concurrency: int  # streaming latency: a few streams at a time, so TTFT is not client-bound
    ttft_rounds: int
    streams: int  # the many-slow-streams scenario
    stream_rounds: int
    stream_procs: int
    overload_concurrency: int
    overload_seconds: float
    overload_max_in_flight: int
    soak_seconds: float
    soak_workers: int
    rss_interval: float
    litellm: bool
    profile: bool
    profile_seconds: int
    local: bool
    local_runs: int
    upload_mib: int
    upload_count: int
    upload_concurrency: int

    @classmethod
    def from_env(cls) -> Plan:
        quick = _flag("BENCH_QUICK")
        return cls(
            quick=quick,
            wrk_seconds=_env_float("BENCH_WRK_SECONDS", 3 if quick else 6),
            warmup_seconds=1 if quick else 2,
            ttft_concurrency=4,
            ttft_rounds=2 if quick else 12,  # 48 TTFTs per target: a p50 that holds still
            streams=int(_env_float("BENCH_STREAMS", 200 if quick else 1000)),
            stream_rounds=1 if quick else 3,
            stream_procs=2,
            overload_concurrency=300 if quick else 1000,
            overload_seconds=4 if quick else 10,
            overload_max_in_flight=64,
            soak_seconds=_env_float("BENCH_SOAK_SECONDS", 20 if quick else 600),
            soak_workers=2,
            rss_interval=2 if quick else 10,
            litellm=_flag("BENCH_LITELLM"),
            profile=_flag("BENCH_PROFILE"),
            profile_seconds=15,
            local=_flag("BENCH_LOCAL", True),
            local_runs=1 if quick else 3,
            upload_mib=10,
            upload_count=int(_env_float("BENCH_UPLOADS", 6 if quick else 20)),
            upload_concurrency=2 if quick else 4,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
