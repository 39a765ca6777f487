"""Running wrk with bench/wrk/post.lua and reading the JSON line its `done()` prints."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LUA = Path(__file__).parent / "wrk" / "post.lua"


@dataclass
class WrkResult:
    connections: int
    seconds: float
    requests: int
    rps: float
    non_2xx: int
    socket_errors: int
    latency_ms: dict[str, float]  # min mean max p50 p75 p90 p99 p999

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    body: str,
    auth: str = "",
    threads: int | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    threads = threads or (1 if connections == 1 else 2)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    env = {**os.environ, "BENCH_BODY": body, "BENCH_AUTH": auth}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout[-500:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    duration = data["duration_us"] / 1e6
    errors = data["errors"]
    lat = {k: round(v / 1000, 3) for k, v in data["latency_us"].items() if k != "stdev"}
    return WrkResult(
        connections=connections,
        seconds=round(duration, 3),
        requests=data["requests"],
        rps=round(data["requests"] / duration, 1) if duration else 0.0,
        non_2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        latency_ms=lat,
    )
