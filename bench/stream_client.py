"""Streaming measurements: N concurrent SSE streams, each run `rounds` times back to back.

Per stream it records the time to the first whole event (TTFT, from sending the request), the number of
events up to and including `data: [DONE]`, and the gap between each two consecutive events. The upstream
paces events 20 ms apart, so a gap well under that (< COALESCED_MS) means two events arrived in one read:
they were held back and coalesced somewhere on the way. `procs` spreads the streams over several client
processes so that at c=1000 the client is not the only bottleneck.

    python -m bench.stream_client URL [--direct URL] [-c 1000] [--rounds 3] [--auth KEY] [--body JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import aiohttp

from bench.stats import summary

COALESCED_MS = 5.0


@dataclass
class RawStreams:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    incomplete: int = 0

    def merge(self, other: RawStreams) -> None:
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.events += other.events
        self.errors.update(other.errors)
        self.incomplete += other.incomplete


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> RawStreams:
    raw = RawStreams()
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            raw.errors[f"http_{resp.status}"] += 1
            return raw
        buf = b""
        last: float | None = None
        count = 0
        done = False
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            buf += chunk
            complete = buf.count(b"\n\n")
            if not complete:
                continue
            cut = buf.rfind(b"\n\n") + 2
            done = done or b"data: [DONE]" in buf[:cut]
            buf = buf[cut:]
            for _ in range(complete):
                if last is None:
                    raw.ttft.append(now - t0)
                else:
                    raw.gaps.append(now - last)
                last = now
            count += complete
        raw.events.append(count)
        if not done:
            raw.incomplete += 1
    return raw


async def _worker(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], rounds: int, until: float
) -> RawStreams:
    raw = RawStreams()
    for _ in range(rounds):
        if time.monotonic() > until:
            break
        try:
            raw.merge(await _one(session, url, body, headers))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raw.errors[type(exc).__name__] += 1
    return raw


async def _run(
    url: str, body: str, auth: str, concurrency: int, rounds: int, max_seconds: float
) -> RawStreams:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=30)
    until = time.monotonic() + max_seconds
    total = RawStreams()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        jobs = [_worker(session, url, body.encode(), headers, rounds, until) for _ in range(concurrency)]
        for part in await asyncio.gather(*jobs):
            total.merge(part)
    return total


def _run_sync(args: tuple[str, str, str, int, int, float]) -> RawStreams:
    return asyncio.run(_run(*args))


@dataclass
class StreamStats:
    concurrency: int
    rounds: int
    wall_s: float
    streams_ok: int
    streams_failed: int
    incomplete: int
    errors: dict[str, int]
    events_per_stream: dict[str, float]
    ttft_ms: dict[str, float]
    gap_ms: dict[str, float]
    coalesced_fraction: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_streams(
    url: str,
    body: str,
    *,
    auth: str = "",
    concurrency: int = 1,
    rounds: int = 1,
    procs: int = 1,
    max_seconds: float = 120.0,
) -> StreamStats:
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    started = time.perf_counter()
    raw = RawStreams()
    if procs == 1:
        raw = _run_sync((url, body, auth, concurrency, rounds, max_seconds))
    else:
        with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
            for part in pool.map(_run_sync, [(url, body, auth, n, rounds, max_seconds) for n in shares]):
                raw.merge(part)
    wall = time.perf_counter() - started
    coalesced = sum(1 for g in raw.gaps if g * 1000 < COALESCED_MS)
    ev = sorted(raw.events)
    return StreamStats(
        concurrency=concurrency,
        rounds=rounds,
        wall_s=round(wall, 2),
        streams_ok=len(raw.events) - raw.incomplete,
        streams_failed=sum(raw.errors.values()) + raw.incomplete,
        incomplete=raw.incomplete,
        errors=dict(raw.errors),
        events_per_stream={"min": ev[0], "median": ev[len(ev) // 2], "max": ev[-1]} if ev else {},
        ttft_ms=summary(raw.ttft, 1000),
        gap_ms=summary(raw.gaps, 1000),
        coalesced_fraction=round(coalesced / len(raw.gaps), 5) if raw.gaps else 0.0,
    )


def main() -> None:
    from bench import canned

    parser = argparse.ArgumentParser(description="concurrent SSE streams: TTFT, event count, gaps")
    parser.add_argument("url")
    parser.add_argument("--direct", help="the upstream's own URL, measured first for comparison")
    parser.add_argument("-c", "--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--auth", default="")
    parser.add_argument("--body", default=canned.request_body("benchstream/canned", stream=True))
    args = parser.parse_args()
    runs = {"direct": args.direct, "target": args.url} if args.direct else {"target": args.url}
    results = {}
    for name, url in runs.items():
        stats = run_streams(
            url,
            args.body,
            auth=args.auth if name == "target" else "",
            concurrency=args.concurrency,
            rounds=args.rounds,
            procs=args.procs,
        )
        results[name] = stats.as_dict()
    if args.direct:
        d, t = results["direct"]["ttft_ms"], results["target"]["ttft_ms"]
        results["added_ttft_ms"] = {k: round(t[k] - d[k], 3) for k in ("p50", "p90", "p99") if k in d}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
