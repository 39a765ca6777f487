"""The scenarios, each run against every target in turn (targets inside, scenario outside, so that drift on
this noisy machine hits every target alike)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import canned, pyspy
from bench.overload import run_overload
from bench.procs import Server, cpu_seconds, rss_mb
from bench.stats import rss_trend
from bench.stream_client import run_streams
from bench.wrk import WrkResult, run_wrk

Log = Callable[[str], None]
BODY = canned.request_body("bench/canned")
STREAM_BODY = canned.request_body("benchstream/canned", stream=True)
SLOW_BODY = canned.request_body("benchslow/canned")


@dataclass
class Target:
    name: str
    base: str
    auth: str = ""
    server: Server | None = None
    stream_path: str = "/v1/chat/completions"  # where the paced stream is (plain servers: /stream/v1/...)

    @property
    def chat_url(self) -> str:
        return self.base + "/v1/chat/completions"

    @property
    def stream_url(self) -> str:
        return self.base + self.stream_path


def smoke(t: Target) -> None:
    """One non-stream and one stream request must succeed before any load is measured."""
    for url, body in ((t.chat_url, BODY), (t.stream_url, STREAM_BODY)):
        req = urllib.request.Request(url, data=body.encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        if t.auth:
            req.add_header("Authorization", f"Bearer {t.auth}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{t.name}: {url} answered {exc.code}: {exc.read()[:300]!r}") from None
        if b"canned" not in data:
            raise RuntimeError(f"{t.name}: {url} answered something else: {data[:200]!r}")


def _check(name: str, r: WrkResult, log: Log) -> None:
    note = f" ({r.non_2xx} non-2xx, {r.socket_errors} socket errors)" if r.non_2xx or r.socket_errors else ""
    lat = r.latency_ms
    log(
        f"  {name:12s} c={r.connections:<4d} {r.rps:9.1f} req/s  "
        f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms{note}"
    )


def wrk_matrix(targets: list[Target], seconds: float, warmup: float, log: Log) -> dict[str, dict[str, Any]]:
    """c=1 latency, c=32 and c=128 throughput; the 2-worker portway only in the throughput runs."""
    out: dict[str, dict[str, Any]] = {}
    log(f"warm-up: {warmup:g} s of c=32 per target (keep-alive pools, caches)")
    for t in targets:
        run_wrk(t.chat_url, connections=32, seconds=warmup, body=BODY, auth=t.auth)
    for conns in (1, 32, 128):
        key = f"c{conns}"
        out[key] = {}
        log(f"wrk c={conns}, {seconds:g} s per target")
        for t in targets:
            if conns == 1 and t.name == "portway_2w":
                continue
            try:
                r = run_wrk(t.chat_url, connections=conns, seconds=seconds, body=BODY, auth=t.auth)
            except RuntimeError as exc:
                out[key][t.name] = {"error": str(exc)}
                log(f"  {t.name}: {exc}")
                continue
            out[key][t.name] = r.as_dict()
            _check(t.name, r, log)
    return out


def streaming(targets: list[Target], plan: Any, log: Log) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"ttft": {}, "many": {}}
    runs = (
        ("ttft", plan.ttft_concurrency, plan.ttft_rounds, 1, 60.0),
        ("many", plan.streams, plan.stream_rounds, plan.stream_procs, 120.0),
    )
    for key, conc, rounds, procs, limit in runs:
        log(f"streams: {conc} concurrent x {rounds} rounds ({procs} client process(es))")
        for t in targets:
            if t.name == "portway_2w":
                continue
            s = run_streams(
                t.stream_url,
                STREAM_BODY,
                auth=t.auth,
                concurrency=conc,
                rounds=1 if t.name == "litellm" else rounds,  # bounded: LiteLLM is far slower here
                procs=procs,
                max_seconds=limit,
            )
            out[key][t.name] = s.as_dict()
            log(
                f"  {t.name:12s} ok {s.streams_ok} failed {s.streams_failed} events {s.events_per_stream} "
                f"ttft p50 {s.ttft_ms.get('p50')} p99 {s.ttft_ms.get('p99')} ms, "
                f"gap p50 {s.gap_ms.get('p50')} p99 {s.gap_ms.get('p99')} ms, "
                f"coalesced {s.coalesced_fraction:.2%}"
            )
    return out


def rss_of(server: Server) -> dict[str, float | None]:
    return {str(pid): rss_mb(pid) for pid in server.workers()}


def soak(target: Target, seconds: float, interval: float, log: Log) -> dict[str, Any]:
    """wrk c=32 for `seconds` while every worker's VmRSS is sampled each `interval` seconds."""
    assert target.server is not None
    workers = target.server.workers()
    series: dict[str, list[tuple[float, float]]] = {str(p): [] for p in workers}
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["wrk"] = run_wrk(
                target.chat_url, connections=32, seconds=seconds, body=BODY, auth=target.auth
            )
        except Exception as exc:
            box["error"] = str(exc)

    log(f"soak: {seconds:g} s of c=32 on {target.name} ({len(workers)} worker(s)), RSS every {interval:g} s")
    cpu0 = {str(p): cpu_seconds(p) for p in workers}
    thread = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        now = time.monotonic() - started
        for pid in workers:
            mb = rss_mb(pid)
            if mb is not None:
                series[str(pid)].append((round(now, 1), round(mb, 1)))
        thread.join(interval)
    out: dict[str, Any] = {"seconds": seconds, "workers": {}}
    for pid, points in series.items():
        if not points:
            continue
        trend = rss_trend(points, seconds)
        c0, c1 = cpu0.get(pid), cpu_seconds(int(pid))
        cpu = round(c1 - c0, 1) if c0 is not None and c1 is not None else None
        out["workers"][pid] = {**trend, "cpu_s": cpu, "samples": points}
        log(
            f"  worker {pid}: RSS {trend['initial_mb']:.1f} at start, {trend['start_mb']:.1f} after warm-up, "
            f"{trend['end_mb']:.1f} at the end (max {trend['max_mb']:.1f}); {cpu} CPU s"
        )
    if "wrk" in box:
        out["wrk"] = box["wrk"].as_dict()
        log(f"  soak throughput {box['wrk'].rps:.1f} req/s, non-2xx {box['wrk'].non_2xx}")
    if "error" in box:
        out["error"] = box["error"]
    return out


def request_log_rows(db: Path) -> int:
    """Rows in portway's request log (SQLite), read beside the running server (WAL allows it)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM request_log").fetchone()[0])


def usage_check(before: int, after: int, answered: int, connections: int) -> dict[str, Any]:
    """Did every answered request leave a usage record? wrk counts answers it read; up to `connections`
    requests were still in flight when it stopped, answered by the server and recorded but not counted."""
    written = after - before
    return {
        "answered": answered,
        "written": written,
        "complete": answered <= written <= answered + connections,
    }


def overload(target: Target, concurrency: int, seconds: float, log: Log) -> dict[str, Any]:
    log(f"overload: {concurrency} callers for {seconds:g} s against a 1 s upstream")
    out = run_overload(target.chat_url, SLOW_BODY, auth=target.auth, concurrency=concurrency, seconds=seconds)
    for who in ("crowd", "probe"):
        r = out[who]
        log(
            f"  {who}: statuses {r['status_counts']} errors {r['errors']} refused latency "
            f"p50 {r['refused_latency_ms'].get('p50')} p99 {r['refused_latency_ms'].get('p99')} ms"
        )
    return out


def profile(
    target: Target, exe: str, seconds: int, out_dir: Path, stamp: str, streams: int, log: Log
) -> dict[str, Any]:
    """py-spy one portway worker under c=32 wrk load, then under `streams` concurrent streams.

    Writes profile-<stamp>-c32.txt and profile-<stamp>-streams.txt (summaries; the .raw collapsed stacks
    stay beside them, git-ignored)."""
    assert target.server is not None
    pid = target.server.workers()[0]
    out: dict[str, Any] = {}

    def c32() -> str:
        r = run_wrk(target.chat_url, connections=32, seconds=seconds + 1, body=BODY, auth=target.auth)
        return f"wrk c=32 ({r.rps:.0f} req/s while sampled)"

    def many() -> str:
        s = run_streams(
            target.stream_url,
            STREAM_BODY,
            auth=target.auth,
            concurrency=streams,
            rounds=50,
            procs=2,
            max_seconds=seconds + 1,
        )
        return f"{streams} concurrent streams ({s.streams_ok} completed while sampled)"

    for name, load in (("c32", c32), ("streams", many)):
        raw = out_dir / f"profile-{stamp}-{name}.raw"
        log(f"profile: py-spy on pid {pid} for {seconds} s under {name}")
        spy = pyspy.record(exe, pid, seconds, raw)
        time.sleep(0.5)
        what = load()
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not raw.is_file():
            out[name] = {"error": f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-300:]}"}
            continue
        summary = pyspy.summarize(raw)
        text = out_dir / f"profile-{stamp}-{name}.txt"
        text.write_text(f"portway worker (pid {pid}) under {what}\n\n" + pyspy.as_text(summary) + "\n")
        log(f"  wrote {text}")
        out[name] = {"file": text.name, "load": what, **summary}
    return out
