"""The response cache: exact-match answers of chat completions, opt-in per model (gateway.yaml `cache:`) or
per virtual key (its `cache` field: every model it asks for).

What is cached: a successful, complete answer (every choice has a finish_reason) of a request whose `model`
matches `cache.enabled_for` (names, aliases or globs), or whose key has `cache` on, and that is
deterministic: `temperature` 0, unless
`cache.allow_nonzero_temperature` or the request header `x-portway-cache: force` (a request without a
temperature is sampled at the provider's default, 1 for OpenAI, and is not cached either). The header
`x-portway-cache: skip` neither reads nor writes the cache for one request.

The key: sha256 over the caller's namespace (its principal: key, user or master; one namespace for all
with `cache.shared`) and the canonical JSON (sorted keys) of the request without the fields that do not
change the answer (`stream`, `stream_options`, `user`, `metadata`, `store`). One form is kept per key, the
completion JSON: a stream is assembled into it (protocols/chat_chunks.py) and replayed as SSE chunks to a
streaming client, so stream and non-stream requests share answers.

Where: `cache.store` memory (per worker), database (table response_cache) or Redis; `auto` is Redis when
PORTWAY_REDIS_URL is set, else the database. Reads happen on the request path only for requests that can
be answered from the cache; writes run in background tasks after the answer. The service always exists (a
key may opt in without any `cache:` config); a store that costs something to open (Redis: its client and
pool) is opened by the first request that uses it (LazyCacheStore).

Limits and usage (services/chat.py): admission runs before the lookup, so a hit counts against rate limits
(requests, and tokens: the client got them) but costs $0; it is recorded with `cache_hit` true, cost 0
and no upstream attempt. With no `enabled_for` and a caller whose key has no `cache`, the chat service skips
all of this with two attribute checks (`by_model`, `Principal.cache`): no lookup, no key computed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from portway.config import CacheConfig
from portway.protocols.chat_chunks import assemble, complete, replay
from portway.providers.base import ChatStream, Usage
from portway.providers.sse import event_data
from portway.routing.router import Target
from portway.usage.records import UsageRecord

if TYPE_CHECKING:
    from portway.services.chat import RequestContext

log = logging.getLogger("portway.cache")

HEADER = "x-portway-cache"  # request: force | skip; answer: hit | miss
_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "store"})


class CacheStore(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryCacheStore:
    """Per worker, LRU-bounded: for one worker, or when answers need not outlive a restart."""

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        self._entries.clear()


class LazyCacheStore:
    """A store opened by its first read or write: a worker whose requests never use the cache (no model in
    `enabled_for`, no key with `cache`) never pays for opening it (Redis: importing redis-py, its pool)."""

    def __init__(self, name: str, open_store: Callable[[], CacheStore]) -> None:
        self.name = name
        self._open = open_store
        self._store: CacheStore | None = None

    def _opened(self) -> CacheStore:
        if self._store is None:
            self._store = self._open()
        return self._store

    async def get(self, key: str) -> bytes | None:
        return await self._opened().get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._opened().put(key, value, ttl)

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()


def request_mode(value: str | None) -> str | None:
    """The request header x-portway-cache as the service reads it (`force`, `skip`; anything else: none)."""
    return value.strip().lower() if value else None


@dataclass(slots=True)
class CachedAnswer:
    provider: str
    model: str  # the target's model
    served_model: str
    usage: Usage
    body: bytes  # the chat.completion JSON

    def encode(self) -> bytes:
        u = self.usage
        tokens = [u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens]
        head = {"p": self.provider, "m": self.model, "s": self.served_model, "u": tokens}
        return orjson.dumps(head) + b"\n" + self.body

    @classmethod
    def decode(cls, value: bytes) -> CachedAnswer:
        head_bytes, _, body = value.partition(b"\n")
        head = orjson.loads(head_bytes)
        prompt, completion, cached, reasoning = head["u"]
        usage = Usage(prompt, completion, cached_tokens=cached, reasoning_tokens=reasoning)
        return cls(head["p"], head["m"], head["s"], usage, body)


def _usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ResponseCache:
    def __init__(self, cfg: CacheConfig, store: CacheStore) -> None:
        self.store = store
        self.ttl = cfg.ttl_seconds
        self.shared = cfg.shared
        self.any_temperature = cfg.allow_nonzero_temperature
        self.max_bytes = cfg.max_entry_bytes
        self._exact = frozenset(p for p in cfg.enabled_for if not any(c in p for c in "*?["))
        self._globs = tuple(p for p in cfg.enabled_for if p not in self._exact)
        # False: only keys with `cache` use it, and the chat service need not ask for anyone else.
        self.by_model = bool(cfg.enabled_for)
        self._pending: set[asyncio.Task[None]] = set()

    def enabled_for(self, model: str) -> bool:
        return model in self._exact or any(fnmatch.fnmatchcase(model, g) for g in self._globs)

    def key_for(self, payload: dict[str, Any], ctx: RequestContext) -> str | None:
        """The request's cache key, or None when it is not to be cached. A caller whose key has `cache` on
        has it for every model; the temperature rule and the request's mode apply all the same."""
        mode = ctx.cache_mode
        if mode == "skip" or not (ctx.principal.cache or self.enabled_for(payload["model"])):
            return None
        if not (self.any_temperature or mode == "force"):
            temperature = payload.get("temperature")
            if temperature is None or temperature != 0:
                return None
        namespace = "*" if self.shared else ctx.principal.id
        normalized = {k: v for k, v in payload.items() if k not in _IGNORED}
        try:
            canonical = orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # not JSON-able (cannot come from a parsed body): not cached
            return None
        return hashlib.sha256(namespace.encode() + b"\0" + canonical).hexdigest()

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            value = await self.store.get(key)
            return None if value is None else CachedAnswer.decode(value)
        except Exception:  # a broken store or entry is a miss, never a failed request
            log.exception("response cache: could not read an entry")
            return None

    # -- writes (background) ---------------------------------------------------------------------------

    def _spawn(self, key: str, answer: CachedAnswer) -> None:
        value = answer.encode()
        if len(value) > self.max_bytes:
            return
        task = asyncio.create_task(self._put(key, value), name="portway-cache-put")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, key: str, value: bytes) -> None:
        try:
            await self.store.put(key, value, self.ttl)
        except Exception:
            log.exception("response cache: could not store an answer")

    def store_completion(
        self, key: str, target: Target, served_model: str, usage: Usage | None, body: bytes
    ) -> None:
        """Keep a non-stream answer (after it was handed over); an incomplete one is not kept."""
        if len(body) > self.max_bytes:
            return
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(completion, dict) or not complete(completion):
            return
        usage = usage or Usage.from_openai(completion.get("usage")) or Usage()
        self._spawn(key, CachedAnswer(target.provider, target.model, served_model, usage, body))

    async def tee(
        self, relay: AsyncGenerator[bytes, None], key: str, target: Target, upstream: ChatStream
    ) -> AsyncGenerator[bytes, None]:
        """Relay a stream and, once it ended complete, keep what it amounts to.

        A client leaves as soon as it has read `data: [DONE]`, which may cancel this generator while the
        relay still does its bookkeeping: an answer passed on up to its [DONE] is kept all the same."""
        events: list[bytes] | None = []
        size = 0
        ended = False
        try:
            async for event in relay:
                if events is not None:
                    size += len(event)
                    if size > self.max_bytes:
                        events = None  # too large to keep: stop collecting
                    else:
                        events.append(event)
                yield event
            ended = True
        finally:
            # Before any await: once the client is gone, every await here may be cancelled again.
            if events and (ended or event_data(events[-1]) == b"[DONE]"):
                self._keep_stream(key, target, upstream, events)
            await relay.aclose()

    def _keep_stream(self, key: str, target: Target, upstream: ChatStream, events: list[bytes]) -> None:
        completion = assemble(events)
        if completion is None:
            return
        usage = upstream.usage or Usage.from_openai(completion.get("usage")) or Usage()
        completion.setdefault("usage", _usage_dict(usage))
        body = orjson.dumps(completion)
        self._spawn(key, CachedAnswer(target.provider, target.model, upstream.served_model, usage, body))

    # -- hits ------------------------------------------------------------------------------------------

    @staticmethod
    async def replay(answer: CachedAnswer, payload: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """A hit for a streaming client: the stored completion as SSE chunks."""
        completion = orjson.loads(answer.body)
        completion.setdefault("usage", _usage_dict(answer.usage))
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        for event in replay(completion, include_usage):
            yield event

    @staticmethod
    def hit_record(ctx: RequestContext, model: str, stream: bool, answer: CachedAnswer) -> UsageRecord:
        u = answer.usage
        return UsageRecord(
            ts=time.time(),
            request_id=ctx.request_id,
            principal=ctx.principal.id,
            requested_model=model,
            provider=answer.provider,
            served_model=answer.served_model,
            status=200,
            latency_ms=(time.monotonic() - ctx.started) * 1000,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            stream=stream,
            endpoint=ctx.endpoint,
            bytes_in=ctx.body_bytes,
            cached_tokens=u.cached_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cache_hit=True,
        )

    async def aclose(self) -> None:
        """Finish the writes in flight (at shutdown), then close the store."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.store.aclose()
