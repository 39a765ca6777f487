"""The assembled gateway: what a worker needs, built from Settings + GatewayConfig, opened/closed once."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from portway.config import GatewayConfig, RoutingConfig
from portway.errors import ConfigError
from portway.http.client import Transport
from portway.identity.auth import Authenticator, ensure_master_key
from portway.identity.crypto import SECRET_KEY_FILE, derive_key, load_or_create_secret
from portway.identity.service import Identity, IdentityConfig
from portway.limits.admission import Admission
from portway.limits.counters import Counters
from portway.limits.memory import MemoryCounters
from portway.providers.base import Provider, ProviderSettings
from portway.providers.registry import create_provider
from portway.providers.search import create_search_backend
from portway.routing.attempts import AttemptRunner
from portway.routing.health import Health
from portway.routing.keypool import KeyPool
from portway.routing.router import Router
from portway.services.cache import CacheStore, LazyCacheStore, MemoryCacheStore, ResponseCache
from portway.services.catalog import Catalog
from portway.services.chat import ChatService
from portway.services.history import HistoryService
from portway.services.media import MediaService
from portway.services.search import SearchService
from portway.services.status import StatusService
from portway.services.usage import UsageService
from portway.services.videos import VideoService
from portway.settings import Settings
from portway.stores.files import FileStore
from portway.stores.sql.analytics import UsageAnalytics
from portway.stores.sql.cache import SqlCacheStore
from portway.stores.sql.catalog import CatalogStore
from portway.stores.sql.database import Database
from portway.stores.sql.responses import ResponseStore
from portway.stores.sql.sessions import SessionStore
from portway.stores.sql.status import StatusStore
from portway.stores.sql.videos import VideoJobStore
from portway.tasks import stop
from portway.telemetry.metrics import RequestMetrics, Sampler
from portway.telemetry.tracing import Tracer
from portway.usage.cost import Pricing, bundled_table
from portway.usage.records import UsageRecord
from portway.usage.writer import UsageWriter

log = logging.getLogger("portway")


def _counters(redis_url: str | None, timeout: float, connect_timeout: float) -> Counters:
    if not redis_url:
        return MemoryCounters()
    from portway.limits.redis import RedisCounters  # redis-py only when configured: ~6 MB per worker

    return RedisCounters(redis_url, socket_timeout=timeout, connect_timeout=connect_timeout)


class Runtime:
    def __init__(self, settings: Settings, cfg: GatewayConfig) -> None:
        self.settings = settings
        self.cfg = cfg
        tc = cfg.transport
        self.transport = Transport(
            connect_timeout=tc.connect_timeout,
            max_connections=tc.max_connections,
            pool_timeout=tc.pool_timeout,
            max_response_bytes=tc.max_response_bytes,
            max_event_bytes=tc.max_event_bytes,
        )
        self.providers: dict[str, Provider] = {}
        self.pools: dict[str, KeyPool] = {}
        rc = cfg.routing
        for name, pc in cfg.enabled_providers().items():
            ps = ProviderSettings(
                name=name,
                type=pc.type,
                base_url=pc.base_url,
                headers=dict(pc.headers),
                timeout=pc.timeout,
                stream_usage=pc.stream_usage,
                options=dict(pc.options),
                verify=pc.verify,
                ca_file=str(pc.ca_file) if pc.ca_file is not None else None,
            )
            self.providers[name] = create_provider(ps, self.transport)
            keys: list[str | None] = list(pc.api_keys) if pc.api_keys else [None]
            self.pools[name] = KeyPool(
                name,
                keys,
                breaker_threshold=rc.breaker_threshold,
                breaker_cooldown=rc.breaker_cooldown,
                max_cooldown=rc.max_cooldown,
            )
        self.router = Router(cfg)
        self.metrics, self.tracer, self.sampler = self._telemetry()
        self.health = Health(cfg.status.window)  # passive: fed by every upstream attempt
        self.runner = self._runner(rc)
        self.db = Database(settings.resolved_database_url())
        self.usage = UsageWriter(self.db, failure_window=cfg.server.ready_write_failure_seconds)
        # GET /v1/status, /admin/status: health + key pools + optional probes, uptime in the database.
        status_store = StatusStore(self.db.engine)
        self.status = StatusService(cfg.status, self.health, self.providers, self.pools, status_store)
        self.responses = ResponseStore(self.db.engine)  # /v1/responses with store (written after the answer)
        self.usage_analytics = UsageService(UsageAnalytics(self.db.engine))  # /admin/usage, /v1/usage
        self.counters = _counters(settings.redis_url, settings.redis_timeout, settings.redis_connect_timeout)
        free = {name for name, provider in self.providers.items() if provider.free}
        self.pricing = Pricing(cfg.pricing, free, bundled_table())  # config > provider lists > table
        # GET /v1/models, /v1/catalog: provider lists + prices, stored with a TTL, refreshed in background.
        store = CatalogStore(self.db.engine)
        self.catalog = Catalog(self.providers, self.pools, self.router, self.pricing, store, cfg.catalog)
        self.admission = Admission(self.counters, self.pricing, cfg.limits)
        # The response cache always exists: a key may opt in (its `cache` field) without any `cache:` config.
        self.chat = ChatService(
            self.router, self.runner, self.admission, self._record, self._response_cache()
        )
        self.search = self._search()  # GET /v1/search
        # Chat history: sessions, and the turns completions naming one append (written in the background).
        self.history = HistoryService(SessionStore(self.db.engine), cfg.history)
        self.chat.history = self.history
        # One usage path for every task; `files` (signed image URLs) is set once the file store exists.
        self.media = MediaService(self.router, self.runner, self.admission, self.pricing, self._record)
        master_key = ensure_master_key(
            settings.data_dir, settings.master_key.get_secret_value() if settings.master_key else None
        )
        self.identity = Identity(IdentityConfig.from_settings(settings), self.db.engine)
        self.auth = Authenticator(master_key, self.identity)
        self.files, self.videos = self._files_and_videos()
        self.media.files = self.files
        self._bg: list[asyncio.Task[Any]] = []
        self.loading: set[str] = set()  # providers still warming up (the local model loading): GET /ready

    def _runner(self, rc: RoutingConfig) -> AttemptRunner:
        """An attempt runner over the worker's providers and key pools, with its observers."""
        return AttemptRunner(
            self.providers, self.pools, rc, health=self.health, tracer=self.tracer, metrics=self.metrics
        )

    def _files_and_videos(self) -> tuple[FileStore, VideoService]:
        """The signed-file store (its key derived from the server secret: no secret of its own) and the
        video jobs, whose media calls get the job's own deadline (`videos.timeout_seconds`) in place of
        the request deadline, through the same providers, key pools and breakers."""
        data_dir, cfg = self.settings.data_dir, self.cfg
        secret = load_or_create_secret(data_dir, SECRET_KEY_FILE, self.identity.config.secret_key)
        fc, vc, rc = cfg.files, cfg.videos, cfg.routing
        files = FileStore(
            data_dir / "files", derive_key(secret, "files"), url_ttl=fc.url_ttl_seconds, keep=fc.keep_seconds
        )
        deadline = vc.timeout_seconds or rc.deadline
        video_rc = rc.model_copy(update={"deadline": deadline, "attempt_timeout": deadline})
        runner = self._runner(video_rc)
        media = MediaService(self.router, runner, self.admission, self.pricing, self._record, files)
        store = VideoJobStore(self.db.engine)
        videos = VideoService(store, files, media.run, self.router, self.admission, self.providers, vc)
        return files, videos

    def _telemetry(self) -> tuple[RequestMetrics | None, Tracer | None, Sampler | None]:
        """Metrics (on unless metrics.enabled is false) and traces (off unless tracing.enabled)."""
        cfg = self.cfg
        tracer = Tracer.create(cfg.tracing, {name: pc.type for name, pc in cfg.providers.items()})
        if not cfg.metrics.enabled:
            return None, tracer, None
        # The model label: a name gateway.yaml spells out (alias, alias target, listed model), else "other".
        models = {*cfg.models, *(t for targets in cfg.models.values() for t in targets)}
        models |= {f"{name}/{m}" for name, pc in cfg.providers.items() for m in pc.models}

        def breakers() -> list[tuple[str, str, str]]:
            now = time.monotonic()
            return [(n, s.label, s.breaker.state(now)) for n, pool in self.pools.items() for s in pool.states]

        def writer() -> tuple[int, int]:
            report = self.usage.health()[1]
            return report["backlog"], report["dropped"]

        return RequestMetrics(models), tracer, Sampler(breakers, writer)

    def _response_cache(self) -> ResponseCache:
        """The response cache's store: cache.store, or (auto) Redis when configured, else the database."""
        cc = self.cfg.cache
        store: CacheStore
        kind = cc.store
        if kind == "auto":
            kind = "redis" if self.settings.redis_url else "database"
        if kind == "memory":
            store = MemoryCacheStore(cc.max_memory_entries)
        elif kind == "redis":
            url = self.settings.redis_url
            if not url:
                raise ConfigError("cache.store: redis needs PORTWAY_REDIS_URL")
            timeout = self.settings.redis_connect_timeout

            def open_redis() -> CacheStore:
                from portway.stores.redis_cache import RedisCacheStore  # redis-py only once it is used

                return RedisCacheStore(url, connect_timeout=timeout)

            store = LazyCacheStore("redis", open_redis)
        else:
            store = SqlCacheStore(self.db.engine)
        return ResponseCache(cc, store)

    def _search(self) -> SearchService:
        sc = self.cfg.search
        backend = create_search_backend(sc.backend, sc.url, sc.timeout, self.transport)
        return SearchService(backend, self.admission, self._record, sc.cache_seconds)

    def _record(self, record: UsageRecord) -> None:
        if self.metrics is not None:
            self.metrics.observe(record)
        if self.tracer is not None:
            self.tracer.on_record(record)
        if self.cfg.server.request_log:
            self.usage.submit(record)

    async def start(self) -> None:
        await self.db.migrate()
        await self.identity.start()  # rotation timer (overdue policies rotate now) + last-used writer
        await self.counters.start()  # Redis: a full pool before the first request (bounded wait)
        self.usage.start()
        self.catalog.start()  # the stored lists, then each provider's list in the background
        if self.sampler is not None:
            self.sampler.start()  # several workers: each one's state gauges, once a second
        self.status.start()  # provider checks each interval (probes only when configured)
        self.files.start()  # the sweeper of expired files, once a minute
        self.videos.start()  # lease renewal; takes over jobs a stopped worker left unfinished
        self.history.start()  # the writer of chat history turns
        for name, provider in self.providers.items():
            # In the background (the local model loads for seconds): /health answers meanwhile.
            self.loading.add(name)
            self._bg.append(asyncio.create_task(self._warm(name, provider), name=f"portway-warm-{name}"))

    async def _warm(self, name: str, provider: Provider) -> None:
        try:
            await provider.warm()
        finally:
            self.loading.discard(name)

    async def aclose(self) -> None:
        for task in self._bg:
            await stop(task)
        # Each step runs even if an earlier one fails: usage records are drained first, the DB closed last.
        # Video jobs first: unfinished ones are handed back (in the DB) for the next worker to run.
        steps = [self.status.aclose, self.videos.aclose, self.files.aclose, self.identity.aclose]
        steps += [self.catalog.aclose, self.usage.aclose]
        steps.append(self.responses.aclose)  # stored responses still being written
        steps.append(self.history.aclose)  # chat history turns still queued
        steps.append(self.search.aclose)
        steps.append(self.chat.cache.aclose)  # cache writes still in flight
        steps += [p.aclose for p in self.providers.values()]
        steps += [t.aclose for t in (self.sampler, self.tracer) if t is not None]  # spans flushed
        for step in [*steps, self.transport.aclose, self.counters.aclose, self.db.aclose]:
            try:
                await step()
            except Exception:
                log.exception("error during shutdown")
