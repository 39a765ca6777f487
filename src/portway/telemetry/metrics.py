"""Prometheus metrics (prometheus-client), safe with several worker processes.

With `portway serve --workers N>1` the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh directory under the data
dir before the workers start (`portway.telemetry.prepare_multiprocess`): each worker then writes its values to
files there and a scrape, served by whichever worker gets it, adds them up (prometheus-client's multiprocess
mode). One worker keeps everything in memory.

Request metrics are updated from the usage record each request ends with (`RequestMetrics.observe`, a few
dictionary look-ups and counter increments: see the README for the measured cost). What is state rather than
an event (breakers, the usage writer's backlog, requests in flight) is read when sampled (`Sampler`): at every
scrape, and once a second per worker in multiprocess mode so the other workers' values stay fresh.

Labels are bounded: the model label is an alias or model named in gateway.yaml, or "other"; never a key, a
user or a client-chosen string.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from portway.tasks import stop
from portway.telemetry import MULTIPROC_ENV

log = logging.getLogger("portway.telemetry")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"

REGISTRY = CollectorRegistry(auto_describe=True)  # portway's own: no process/GC collectors of the library

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_SERIES = ("endpoint", "provider", "model")

REQUESTS = Counter(
    "portway_requests", "Requests answered, by endpoint, status, provider and model",
    [*_SERIES, "status"], registry=REGISTRY,
)  # fmt: skip
LATENCY = Histogram(
    "portway_request_duration_seconds", "Arrival to the last byte (streams: to the end of the stream)",
    _SERIES, buckets=_LATENCY, registry=REGISTRY,
)  # fmt: skip
TTFT = Histogram(
    "portway_time_to_first_token_seconds", "Streams: arrival to the first event sent to the client",
    _SERIES, buckets=_TTFT, registry=REGISTRY,
)  # fmt: skip
TOKENS = Counter(
    "portway_tokens", "Tokens by kind: prompt, completion, cached (of prompt), reasoning (of completion)",
    [*_SERIES, "kind"], registry=REGISTRY,
)  # fmt: skip
COST = Counter("portway_cost_usd", "Cost charged (USD)", _SERIES, registry=REGISTRY)
UPSTREAM_ERRORS = Counter(
    "portway_upstream_errors", "Failed upstream attempts by provider and class (auth, rate_limit, server, "
    "timeout, connection, bad_response, bad_request, forbidden, deadline)",
    ["provider", "kind"], registry=REGISTRY,
)  # fmt: skip
IN_FLIGHT = Gauge(
    "portway_in_flight_requests", "Requests being served (/v1/*)", registry=REGISTRY,
    multiprocess_mode="livesum",
)  # fmt: skip
BREAKER = Gauge(
    "portway_breaker_state", "Circuit breaker per provider key: 0 closed, 1 half-open, 2 open "
    "(the worst over workers)", ["provider", "key"], registry=REGISTRY, multiprocess_mode="livemax",
)  # fmt: skip
BACKLOG = Gauge(
    "portway_usage_backlog", "Usage records waiting to be written", registry=REGISTRY,
    multiprocess_mode="livesum",
)  # fmt: skip
DROPPED = Counter(
    "portway_usage_dropped", "Usage records lost (queue full, or refused by the database)", registry=REGISTRY
)
_BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


class Record(Protocol):
    """What a request's usage record offers (usage.records.UsageRecord)."""

    endpoint: str
    status: int
    provider: str | None
    requested_model: str
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float


class _Series:
    """The label children of one (endpoint, provider, model): looked up once, then only incremented."""

    __slots__ = (
        "cached",
        "completion",
        "cost",
        "labels",
        "latency",
        "prompt",
        "reasoning",
        "statuses",
        "ttft",
    )

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.statuses: dict[int, Counter] = {}
        self.latency = LATENCY.labels(*labels)
        self.ttft = TTFT.labels(*labels)
        self.prompt = TOKENS.labels(*labels, "prompt")
        self.completion = TOKENS.labels(*labels, "completion")
        self.cached = TOKENS.labels(*labels, "cached")
        self.reasoning = TOKENS.labels(*labels, "reasoning")
        self.cost = COST.labels(*labels)

    def status(self, status: int) -> Counter:
        child = self.statuses.get(status)
        if child is None:
            child = self.statuses[status] = REQUESTS.labels(*self.labels, str(status))
        return child


class RequestMetrics:
    """Per-request metrics from the usage record (the Runtime's record callback)."""

    def __init__(self, models: Iterable[str]) -> None:
        self.models = frozenset(models)
        self._series: dict[tuple[str, str | None, str], _Series] = {}

    def observe(self, r: Record) -> None:
        model = r.requested_model if r.requested_model in self.models else OTHER
        key = (r.endpoint, r.provider, model)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series((r.endpoint, r.provider or "none", model))
        series.status(r.status).inc()
        series.latency.observe(r.latency_ms / 1000)
        if r.ttft_ms:
            series.ttft.observe(r.ttft_ms / 1000)
        if r.prompt_tokens:
            series.prompt.inc(r.prompt_tokens)
        if r.completion_tokens:
            series.completion.inc(r.completion_tokens)
        if r.cached_tokens:
            series.cached.inc(r.cached_tokens)
        if r.reasoning_tokens:
            series.reasoning.inc(r.reasoning_tokens)
        if r.cost_usd:
            series.cost.inc(r.cost_usd)

    @staticmethod
    def upstream_error(provider: str, kind: str) -> None:
        """One failed upstream attempt (routing/attempts.py); not on the path of a successful request."""
        UPSTREAM_ERRORS.labels(provider, kind).inc()


class InFlight(Protocol):
    in_flight: int


BreakerStates = Callable[[], Iterable[tuple[str, str, str]]]  # (provider, key label, breaker state)
WriterState = Callable[[], tuple[int, int]]  # (backlog, dropped so far)


class Sampler:
    """Sets the state gauges from the worker's parts: at each scrape, and in multiprocess mode every
    `interval` seconds (another worker serves the scrape)."""

    def __init__(self, breakers: BreakerStates, writer: WriterState, interval: float = 1.0) -> None:
        self.breakers = breakers
        self.writer = writer
        self.interval = interval
        self.door: InFlight | None = None  # api/middleware.AdmissionControl, set by app.create_asgi
        self._dropped = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        if self.door is not None:
            IN_FLIGHT.set(self.door.in_flight)
        for provider, key, state in self.breakers():
            BREAKER.labels(provider, key).set(_BREAKER_CODES.get(state, 2))
        backlog, dropped = self.writer()
        BACKLOG.set(backlog)
        if dropped > self._dropped:
            DROPPED.inc(dropped - self._dropped)
            self._dropped = dropped

    def start(self) -> None:
        if multiprocess_dir() is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="portway-metrics-sampler")

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a metric must never take a worker down
                log.exception("metrics sampling failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None
        if multiprocess_dir() is not None:
            from prometheus_client import multiprocess

            # Its live gauges leave the sums.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> bytes:
    """The text exposition: this process's registry, or every worker's files in multiprocess mode."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
