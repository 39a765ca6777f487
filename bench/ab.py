"""A quick c=32 comparison for working on the hot path: the bare forwarder against portway, interleaved.

    .venv/bin/python -m bench.ab                   # 3 rounds x 5 s each, forwarder and portway alternating
    .venv/bin/python -m bench.ab --rounds 5 --seconds 4 --variant nolog --variant master
    .venv/bin/python -m bench.ab --profile 10      # also py-spy portway's worker (summary printed)

Variants (each its own 1-worker portway, same nginx upstream): `full` (virtual key with limits, request
log on: what `make bench` measures), `nolog` (the same, `server.request_log: false`), `keyonly` (a virtual
key without limits, no request log), `master` (master key: no limits), `bare` (master key, no request log).
Prints req/s per round, the median ratio to the forwarder, and each server's CPU time per request (its
worker processes' user + system time over the requests wrk counted: steadier than req/s on a shared
machine). Not a substitute for `make bench` (no streams, soak or c=1 tail): a way to see in a minute
whether a change moved c=32, on a machine where absolute figures drift between runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import deps, pyspy, servers
from bench.procs import Server, cpu_seconds, raise_nofile
from bench.scenarios import BODY, STREAM_BODY
from bench.stream_client import run_streams
from bench.wrk import run_wrk

VARIANTS = {
    "full": ("limits", True),  # (auth, request log)
    "nolog": ("limits", False),
    "keyonly": ("key", False),  # a virtual key without limits: auth by key hash, nothing to count
    "master": ("master", True),
    "bare": ("master", False),
    "full-uvicorn": ("limits", True),  # `full` on uvicorn's httptools protocol (PORTWAY_HTTP=httptools)
    "bare-uvicorn": ("master", False),
}


def _portway(tmp: Path, name: str, up_port: int, live: list[Server]) -> tuple[str, str, Server]:
    how, request_log = VARIANTS[name]
    cfg: dict[str, Any] = servers.portway_config(up_port)
    cfg["server"]["request_log"] = request_log
    env = {"PORTWAY_HTTP": "httptools"} if name.endswith("-uvicorn") else {}
    pw = servers.portway(tmp, f"portway_{name}", cfg, workers=1, env=env)
    live.append(pw.server)
    pw.server.start(60)
    auth = servers.MASTER_KEY
    if how != "master":
        auth = servers.virtual_key(pw.url, limits=how == "limits")[0]
    return pw.url + "/v1/chat/completions", auth, pw.server


def _ttft(
    targets: dict[str, tuple[str, str, Server]], up_port: int, rounds: int, tmp: Path, live: list[Server]
) -> None:
    """Streaming TTFT, 4 streams at a time (as `make bench` measures it), direct upstream and the uvicorn
    floor (bench/floor.py: uvicorn answering the stream itself, no upstream hop) included."""
    stream = "/stream/v1/chat/completions"
    floor, port = servers.floor(tmp)
    live.append(floor)
    floor.start(30)
    urls = {"direct": (f"http://127.0.0.1:{up_port}{stream}", ""), "floor": (f"http://127.0.0.1:{port}/", "")}
    for name, (url, auth, _) in targets.items():
        urls[name] = (url.replace("/v1/chat/completions", stream) if name == "forwarder" else url, auth)
    for name, (url, auth) in urls.items():
        s = run_streams(url, STREAM_BODY, auth=auth, concurrency=4, rounds=rounds)
        ttft = s.ttft_ms
        print(f"{name:10} TTFT p50 {ttft['p50']:.2f} ms  p90 {ttft['p90']:.2f} ms  ok {s.streams_ok}")


def _cpu(server: Server) -> float:
    """CPU seconds of a server's worker processes (all their threads): steadier than req/s here."""
    return sum(cpu_seconds(pid) or 0.0 for pid in server.workers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: full")
    parser.add_argument("--profile", type=int, default=0, help="seconds of py-spy on the first variant")
    parser.add_argument("--ttft", type=int, default=0, help="rounds of 4 concurrent streams: TTFT per target")
    args = parser.parse_args()
    deps.ensure_debian_packages(print)
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="portway-ab-"))
    live: list[Server] = []
    try:
        up, _, up_port, _ = servers.nginx_servers(tmp)
        live.append(up)
        up.start(30)
        fwd, fwd_port = servers.forwarder(tmp, up_port)
        live.append(fwd)
        fwd.start(30)
        targets = {"forwarder": (f"http://127.0.0.1:{fwd_port}/v1/chat/completions", "", fwd)}
        for name in args.variant or ["full"]:
            targets[name] = _portway(tmp, name, up_port, live)
        if args.ttft:
            _ttft(targets, up_port, args.ttft, tmp, live)
            return
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for url, auth, _ in targets.values():
            run_wrk(url, connections=args.connections, seconds=1, body=BODY, auth=auth)
        for i in range(args.rounds):
            for name, (url, auth, server) in targets.items():
                before = _cpu(server)
                r = run_wrk(url, connections=args.connections, seconds=args.seconds, body=BODY, auth=auth)
                rps[name].append(r.rps)
                cpu[name].append((_cpu(server) - before) / max(1, r.requests) * 1e6)
                print(
                    f"round {i + 1} {name:12} {r.rps:9,.0f} req/s  p99 {r.latency_ms['p99']:.2f} ms  "
                    f"CPU {cpu[name][-1]:.0f} us/req",
                    flush=True,
                )
        base = statistics.median(rps["forwarder"])
        for name, values in rps.items():
            med = statistics.median(values)
            print(
                f"{name:12} median {med:9,.0f} req/s  = {med / base:.3f} x forwarder; "
                f"CPU {statistics.median(cpu[name]):.0f} us/req"
            )
        if args.profile:
            name = (args.variant or ["full"])[0]
            url, auth, server = targets[name]
            exe = deps.py_spy()
            assert exe, "py-spy is not available"
            raw = tmp / "profile.raw"
            spy = pyspy.record(exe, server.workers()[0], args.profile, raw)
            time.sleep(0.5)
            run_wrk(url, connections=args.connections, seconds=args.profile + 1, body=BODY, auth=auth)
            spy.communicate(timeout=args.profile + 60)
            print(pyspy.as_text(pyspy.summarize(raw, top=40)))
    finally:
        for server in reversed(live):
            server.stop()


if __name__ == "__main__":
    main()
