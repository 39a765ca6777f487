"""Overload: far more concurrent callers than the gateway admits, and how fast the refusals come back.

A crowd of `concurrency` callers (each its own keep-alive connection) posts to a slow upstream (1 s per
answer), so the admitted slots (`server.max_in_flight`) stay full and everyone else should be refused at
once (503 `server_overloaded` or 429) instead of waiting in a queue. A refused caller backs off `pause`
seconds (jittered, like a client honouring a short Retry-After) before trying again; an answered one asks
again at once. Alongside, one probe caller sends a request every 20 ms and times each answer: its
latencies are the cleanest "how fast is a refusal" figure, free of the crowd's own client-side queueing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import aiohttp

from bench.stats import summary


@dataclass
class Samples:
    by_status: dict[int, list[float]]
    errors: Counter[str]

    def add(self, status: int, seconds: float) -> None:
        self.by_status.setdefault(status, []).append(seconds)


def _report(samples: Samples, wall: float) -> dict[str, Any]:
    refused = [t for s, ts in samples.by_status.items() if s in (429, 503) for t in ts]
    answered = samples.by_status.get(200, [])
    return {
        "status_counts": {str(s): len(ts) for s, ts in sorted(samples.by_status.items())},
        "errors": dict(samples.errors),
        "refused_per_s": round(len(refused) / wall, 1) if wall else 0.0,
        "answered_per_s": round(len(answered) / wall, 1) if wall else 0.0,
        "refused_latency_ms": summary(refused, 1000),
        "answered_latency_ms": summary(answered, 1000),
    }


async def _call(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    async with session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def _caller(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    until: float,
    pause: float,
    samples: Samples,
) -> None:
    await asyncio.sleep(random.uniform(0, 0.2))  # spread the first wave over 200 ms
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            status = await _call(session, url, body, headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            samples.errors[type(exc).__name__] += 1
            await asyncio.sleep(pause)
            continue
        samples.add(status, time.perf_counter() - t0)
        if status != 200:
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))


async def _probe(url: str, body: bytes, headers: dict[str, str], seconds: float) -> Samples:
    samples = Samples({}, Counter())
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as session:
        await asyncio.sleep(1.0)  # let the crowd fill the admitted slots first
        until = time.monotonic() + seconds - 1.0
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                status = await _call(session, url, body, headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                samples.errors[type(exc).__name__] += 1
            else:
                samples.add(status, time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    return samples


def _probe_process(url: str, body: bytes, headers: dict[str, str], seconds: float) -> Samples:
    """The probe has a process (and an event loop) of its own: the crowd's client work does not delay it."""
    return asyncio.run(_probe(url, body, headers, seconds))


async def _run(
    url: str, body: str, auth: str, concurrency: int, seconds: float, pause: float
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
    crowd = Samples({}, Counter())
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=30)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        started = time.perf_counter()
        until = time.monotonic() + seconds
        probe_job = loop.run_in_executor(pool, _probe_process, url, body.encode(), headers, seconds)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            jobs = [
                _caller(session, url, body.encode(), headers, until, pause, crowd) for _ in range(concurrency)
            ]
            await asyncio.gather(*jobs)
        wall = time.perf_counter() - started
        probe = await probe_job
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "pause_s": pause,
        "crowd": _report(crowd, wall),
        "probe": _report(probe, wall),
    }


def run_overload(
    url: str, body: str, *, auth: str, concurrency: int = 1000, seconds: float = 10.0, pause: float = 0.5
) -> dict[str, Any]:
    return asyncio.run(_run(url, body, auth, concurrency, seconds, pause))
