"""The model catalog: every provider's model list merged with the prices into one list (`GET /v1/models`,
`GET /v1/catalog`), kept in the database with a TTL and refreshed in the background.

Contract (the Runtime has one as `rt.catalog`; the compat helpers call it):

- `await catalog.models(provider=None, modality=None, free=None) -> list[CatalogModel]`: aliases first
  (provider "portway", the terms of their first target), then every "provider/model". Never waits for an
  upstream: it answers from memory, and when a list is older than `catalog.ttl_seconds` it asks the
  background task for a refresh and answers with what it has (`stale` says so).
- `await catalog.grouping(models=None) -> dict`: seed 001's `/api/models` shape,
  `{"cached", "stale", "fetched_at", "models": {"all", "multimodal", "textOnly", "free", "paid",
  "byProvider": {provider: [...]}}, "stats": {"total", "multimodal", "textOnly", "free", "paid",
  "byProvider": {provider: n}}}`, each model as `CatalogModel.as_dict()`.
- `catalog.cached`: the lists came from the database (a restart, another worker, a provider that is down)
  rather than this worker's own fetch; `catalog.stale`: some provider's list is older than the TTL or its
  last fetch failed (then its last good list is served).

Where each field comes from: the provider's own list (`Provider.list_models`: OpenAI-compatible `/models`,
OpenRouter's pricing/context/modalities, Hugging Face's providers; Anthropic's and Gemini's own paged lists;
the local model lists its own), else the bundled table (usage/prices.json), with prices resolved by
`usage.cost.Pricing` (config first: the operator's override). A model's `created` is its provider's, else
the table's, else when portway first saw it (stored), never the server's start. The listed prices are handed
to `Pricing` after each merge, so request costs use them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from portway.config import CatalogConfig
from portway.providers.base import Provider, UpstreamFailure
from portway.providers.listing import ListedModel
from portway.routing.keypool import KeyPool
from portway.routing.router import Router, Target
from portway.stores.sql.catalog import CatalogRow, CatalogStore
from portway.tasks import stop
from portway.usage.cost import Pricing, UnitPrices, bundled_table, listed_prices

log = logging.getLogger("portway.catalog")

_ALIAS_OWNER = "portway"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str  # "provider/model", or an alias
    provider: str  # "portway" for an alias
    modalities_in: tuple[str, ...] = ("text",)
    modalities_out: tuple[str, ...] = ("text",)
    context_length: int | None = None
    input: float | None = None  # USD per 1M tokens; None: unpriced
    cached_input: float | None = None
    output: float | None = None
    reasoning: float | None = None
    image: float | dict[str, float] | None = None  # per image (flat or by size)
    characters: float | None = None  # per 1M characters (speech)
    audio_minute: float | None = None
    video_second: float | None = None
    free: bool = False
    created: int = 0
    targets: tuple[str, ...] = ()  # an alias: its chain
    stale: bool = False  # its provider's list is old or could not be fetched

    @property
    def multimodal(self) -> bool:
        return set(self.modalities_in) != {"text"} or set(self.modalities_out) != {"text"}

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modalities_in"], out["modalities_out"] = list(self.modalities_in), list(self.modalities_out)
        out["targets"] = list(self.targets)
        out["multimodal"] = self.multimodal
        return out


@dataclass(slots=True)
class _Source:
    """One provider's list as the catalog knows it."""

    listed: dict[str, ListedModel] = field(default_factory=dict)  # its own list (empty: none)
    created: dict[str, int] = field(default_factory=dict)  # model -> created, as stored
    fetched_at: float = 0.0  # wall clock of the stored list; 0: never
    attempted_at: float = 0.0  # monotonic; the last fetch in this worker
    failed: bool = False
    fetched_here: bool = False


class Catalog:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        pools: Mapping[str, KeyPool],
        router: Router,
        pricing: Pricing,
        store: CatalogStore,
        cfg: CatalogConfig,
    ) -> None:
        self._providers, self._pools, self._router = providers, pools, router
        self._pricing, self._store, self.cfg = pricing, store, cfg
        self._sources = {name: _Source() for name in providers}
        self._table = bundled_table()
        self._models: list[CatalogModel] = []
        self._stale = False
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rebuild()  # config and table at once: /v1/models answers before the first load

    # -- the contract --------------------------------------------------------------------------------

    async def models(
        self, provider: str | None = None, modality: str | None = None, free: bool | None = None
    ) -> list[CatalogModel]:
        if self._task is not None and self.cfg.refresh and self._any_due(time.monotonic()):
            self._poke.set()  # served as it is; the background task refreshes
        found = self._models
        if provider is not None:
            found = [m for m in found if m.provider == provider]
        if modality is not None:
            found = [m for m in found if modality in m.modalities_in or modality in m.modalities_out]
        if free is not None:
            found = [m for m in found if m.free is free]
        return found

    async def grouping(self, models: list[CatalogModel] | None = None) -> dict[str, Any]:
        models = await self.models() if models is None else models
        rows = [m.as_dict() for m in models]
        by_provider: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_provider.setdefault(row["provider"], []).append(row)
        groups = {
            "all": rows,
            "multimodal": [r for r in rows if r["multimodal"]],
            "textOnly": [r for r in rows if not r["multimodal"]],
            "free": [r for r in rows if r["free"]],
            "paid": [r for r in rows if not r["free"]],
            "byProvider": by_provider,
        }
        stats: dict[str, Any] = {k: len(v) for k, v in groups.items() if k not in ("all", "byProvider")}
        stats = {"total": len(rows), **stats, "byProvider": {k: len(v) for k, v in by_provider.items()}}
        fetched = [s.fetched_at for s in self._sources.values() if s.fetched_at]
        return {
            "cached": self.cached,
            "stale": self.stale,
            "fetched_at": min(fetched) if fetched else None,
            "models": groups,
            "stats": stats,
        }

    @property
    def cached(self) -> bool:
        return any(s.fetched_at and not s.fetched_here for s in self._sources.values())

    @property
    def stale(self) -> bool:
        if self._stale or not self.cfg.refresh:
            return self._stale
        now, ttl = time.time(), self.cfg.ttl_seconds
        return any(s.fetched_at and now - s.fetched_at >= ttl for s in self._sources.values())

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="portway-catalog")

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:  # the catalog must never take the worker down: log, try again later
                log.exception("model catalog refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._next_wait(time.monotonic()))
            self._poke.clear()

    async def _tick(self) -> None:
        await self._load()
        now = time.monotonic()
        due = [name for name in self._sources if self._due(name, now)]
        if due:
            await asyncio.gather(*(self._refresh(name) for name in due))
        self._rebuild()

    # -- refresh -------------------------------------------------------------------------------------

    def _due(self, name: str, now: float) -> bool:
        src = self._sources[name]
        if not src.fetched_at:
            return not src.attempted_at or now - src.attempted_at >= self.cfg.retry_seconds
        if not self.cfg.refresh:
            return False
        if src.failed:
            return now - src.attempted_at >= self.cfg.retry_seconds
        return time.time() - src.fetched_at >= self.cfg.ttl_seconds

    def _any_due(self, now: float) -> bool:
        return any(self._due(name, now) for name in self._sources)

    def _next_wait(self, now: float) -> float:
        waits = [self.cfg.ttl_seconds]
        for src in self._sources.values():
            if src.failed or not src.fetched_at:
                waits.append(self.cfg.retry_seconds - (now - src.attempted_at))
            elif self.cfg.refresh:
                waits.append(self.cfg.ttl_seconds - (time.time() - src.fetched_at))
        return max(0.05, min(waits))

    async def _load(self) -> None:
        """The stored lists: another worker's refresh counts as ours (no second fetch)."""
        stored: dict[str, list[CatalogRow]] = {}
        for row in await self._store.load():
            stored.setdefault(row.provider, []).append(row)
        for name, rows in stored.items():
            src = self._sources.get(name)
            if src is None:
                continue
            for r in rows:
                src.created.setdefault(r.id.partition("/")[2], r.created)
            newest = max(r.fetched_at for r in rows)
            if newest <= src.fetched_at:
                continue
            src.created = {r.id.partition("/")[2]: r.created for r in rows}
            src.listed = {m.model: m for m in (_from_entry(r.entry) for r in rows) if m is not None}
            src.fetched_at, src.failed, src.fetched_here = newest, False, False

    async def _refresh(self, name: str) -> None:
        src, provider = self._sources[name], self._providers[name]
        src.attempted_at = time.monotonic()
        listed: list[ListedModel] = []
        if self.cfg.refresh:
            try:
                listed = await provider.list_models(self._key(name), self.cfg.timeout_seconds)
            except UpstreamFailure as failure:
                log.warning("model list of %s: %s (serving its last list)", name, failure.message)
                return await self._failed(name, src)
            except Exception:
                log.exception("model list of %s failed (serving its last list)", name)
                return await self._failed(name, src)
        now = time.time()
        src.listed = {m.model: m for m in listed}
        models = list(src.listed) + [m for m in self._unlisted(name, src) if m not in src.listed]
        created = {m: src.created.get(m) or self._created(name, m) or int(now) for m in models}
        rows = [
            CatalogRow(f"{name}/{m}", name, _to_entry(src.listed.get(m), m), created[m], now) for m in models
        ]
        await self._store.replace_provider(name, rows)
        src.created, src.fetched_at, src.failed, src.fetched_here = created, now, False, True

    async def _failed(self, name: str, src: _Source) -> None:
        """Served stale; a provider never listed yet still has its configured models stored with the time
        portway first saw them (`fetched_at` 0: not a list), so their `created` stays put."""
        src.failed = True
        if src.fetched_at:
            return
        new = [m for m in self._unlisted(name, src) if m not in src.created]
        if not new:
            return
        for m in new:
            src.created[m] = self._created(name, m) or int(time.time())
        rows = [CatalogRow(f"{name}/{m}", name, _to_entry(None, m), c, 0.0) for m, c in src.created.items()]
        await self._store.replace_provider(name, rows)

    def _key(self, name: str) -> str | None:
        """A key the pool would use now, without taking it: a list request is not a chat attempt, so it
        counts against no breaker and leaves the pool's balance alone."""
        pool = self._pools.get(name)
        if pool is None or not pool.states:
            return None
        now = time.monotonic()
        return next((s.key for s in pool.states if s.usable(now)), pool.states[0].key)

    # -- merge ---------------------------------------------------------------------------------------

    def _unlisted(self, name: str, src: _Source) -> list[str]:
        """Models known without the provider's list: configured ones, and the table's when the provider
        lists nothing itself (a provider that lists its models is the truth about which it has)."""
        found = [t.model for t in self._configured() if t.provider == name]
        if not src.listed:
            prefix = name + "/"
            found += [k[len(prefix) :] for k in self._table if k.startswith(prefix)]
        return list(dict.fromkeys(found))

    def _configured(self) -> list[Target]:
        return [Target.parse(mid) for mid, owner in self._router.model_ids() if owner != _ALIAS_OWNER]

    def _created(self, name: str, model: str) -> int | None:
        listed = self._sources[name].listed.get(model)
        if listed is not None and listed.created:
            return listed.created
        table = self._table.get(f"{name}/{model}", {}).get("created")
        return table if isinstance(table, int) else None

    def _rebuild(self) -> None:
        now = time.time()
        models: dict[str, CatalogModel] = {}
        prices: dict[str, UnitPrices] = {}
        any_stale = False
        for name, src in self._sources.items():
            stale = src.failed or (
                self.cfg.refresh and bool(src.fetched_at) and now - src.fetched_at >= self.cfg.ttl_seconds
            )
            any_stale = any_stale or stale
            for model in [*src.listed, *self._unlisted(name, src)]:
                mid = f"{name}/{model}"
                if mid in models:
                    continue
                listed = src.listed.get(model)
                if listed is not None:
                    own = listed_prices(listed.input, listed.cached_input, listed.output, listed.reasoning)
                    if own is not None:
                        prices[mid] = own
                models[mid] = self._entry(name, model, listed, stale, src)
        self._pricing.set_listed(prices)  # before the entries' prices are read back through it
        entries = [self._priced(m) for m in models.values()]
        by_id = {m.id: m for m in entries}
        aliases = [self._alias(alias, targets, by_id) for alias, targets in self._router.aliases.items()]
        self._models, self._stale = aliases + entries, any_stale

    def _entry(
        self, name: str, model: str, listed: ListedModel | None, stale: bool, src: _Source
    ) -> CatalogModel:
        table = self._table.get(f"{name}/{model}", {})
        ins = listed.modalities_in if listed else tuple(table.get("modalities_in", ("text",)))
        outs = listed.modalities_out if listed else tuple(table.get("modalities_out", ("text",)))
        context = (listed.context_length if listed else None) or table.get("context_length")
        provider = self._providers[name]
        free = provider.free or bool(listed and listed.free)
        created = src.created.get(model) or self._created(name, model) or 0
        return CatalogModel(
            f"{name}/{model}", name, ins, outs, context, free=free, created=created, stale=stale
        )

    def _priced(self, m: CatalogModel) -> CatalogModel:
        p = self._pricing.prices(m.id)
        inp, out = p.tokens if p.tokens is not None else (None, None)
        media = (p.image, p.characters, p.audio_minute, p.video_second)
        priced_free = p.tokens == (0.0, 0.0) and all(not v for v in media)
        return _replace(
            m,
            input=inp,
            cached_input=p.cached_input,
            output=out,
            reasoning=p.reasoning,
            image=_image(p.image),
            characters=p.characters,
            audio_minute=p.audio_minute,
            video_second=p.video_second,
            free=m.free or priced_free,
        )

    def _alias(self, alias: str, targets: tuple[Target, ...], by_id: dict[str, CatalogModel]) -> CatalogModel:
        first = next((by_id[t.id] for t in targets if t.id in by_id), None)
        chain = tuple(t.id for t in targets)
        if first is None:
            return CatalogModel(alias, _ALIAS_OWNER, targets=chain)
        return _replace(
            first,
            id=alias,
            provider=_ALIAS_OWNER,
            targets=chain,
            free=all(by_id[t.id].free for t in targets if t.id in by_id),
        )


def _replace(m: CatalogModel, **changes: Any) -> CatalogModel:
    values = {f: getattr(m, f) for f in CatalogModel.__dataclass_fields__}
    return CatalogModel(**{**values, **changes})


def _image(value: Any) -> float | dict[str, float] | None:
    return dict(value) if isinstance(value, Mapping) else value


def _to_entry(listed: ListedModel | None, model: str) -> dict[str, Any]:
    """What is stored of one model: its provider's own listing (None: known from config or the table)."""
    if listed is None:
        return {"model": model, "listed": False}
    out = {k: v for k, v in asdict(listed).items() if v is not None}
    return {**out, "listed": True}


def _from_entry(entry: Any) -> ListedModel | None:
    if not isinstance(entry, dict) or not entry.get("listed") or not isinstance(entry.get("model"), str):
        return None
    known = {k: entry[k] for k in ListedModel.__dataclass_fields__ if k in entry}
    for name in ("modalities_in", "modalities_out"):
        if name in known:
            known[name] = tuple(known[name])
    try:
        return ListedModel(**known)
    except TypeError:
        return None
