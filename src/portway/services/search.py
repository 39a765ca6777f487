"""Web search (GET /v1/search): limits, a short per-worker cache, the backend call and a usage record.

`SearchService.search(query, limit, ctx)` is the one entry point, for portway's own route and for any other
shape of the same call (seed 003's `/api/v1/web-search` answers `{status, source, query, results: [{title,
url}]}`: a compat route calls `search()` and maps `SearchAnswer.backend` to `source` and each result's title
and url, with `status` "success"). It:

1. admits the request against the caller's limits (per IP, key, user: rpm and daily requests count a
   search; it costs no tokens and $0),
2. answers from the cache when the same query (whitespace-normalised, case-folded) with at least as many
   results was answered within `search.cache_seconds` (results are public, so the cache is shared by
   every caller),
3. else asks the backend, bounded by `search.timeout`,
4. records one usage row (endpoint "search", provider the backend's name) and settles the limits.

Backend failures become `search_unavailable` (503), `search_timeout` (504) or `search_error` (502).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from portway.errors import PortwayError, SearchError, SearchTimeout, SearchUnavailable
from portway.limits.admission import Admission, Ticket
from portway.providers.base import Usage
from portway.providers.search import FailureKind, SearchBackend, SearchFailure, SearchResult
from portway.services.chat import RequestContext
from portway.services.common import shielded
from portway.usage.records import UsageRecord

MAX_QUERY_CHARS = 500
_MAX_ENTRIES = 1024
_ERRORS: dict[FailureKind, type[PortwayError]] = {
    FailureKind.TIMEOUT: SearchTimeout,
    FailureKind.UNAVAILABLE: SearchUnavailable,
    FailureKind.BAD_RESPONSE: SearchError,
}


@dataclass(slots=True)
class SearchAnswer:
    query: str
    backend: str
    results: list[SearchResult]
    cached: bool
    headers: dict[str, str]  # x-ratelimit-* for the caller

    def to_dict(self) -> dict[str, object]:
        return {
            "object": "search",
            "query": self.query,
            "backend": self.backend,
            "results": [{"title": r.title, "url": r.url, "snippet": r.snippet} for r in self.results],
        }


def normalize_query(query: str) -> str:
    return " ".join(query.split())


class SearchService:
    def __init__(
        self,
        backend: SearchBackend,
        admission: Admission,
        record: Callable[[UsageRecord], None],
        cache_seconds: float,
    ) -> None:
        self.backend = backend
        self.admission = admission
        self.record = record
        self.cache_seconds = cache_seconds
        # (query key) -> (expires at, results, how many were asked for): LRU-bounded
        self._cache: OrderedDict[str, tuple[float, list[SearchResult], int]] = OrderedDict()

    def _cached(self, key: str, limit: int) -> list[SearchResult] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, results, asked = entry
        if expires <= time.monotonic():
            del self._cache[key]
            return None
        if asked < limit and len(results) >= asked:  # fewer were asked for than now: not enough
            return None
        self._cache.move_to_end(key)
        return results[:limit]

    def _remember(self, key: str, results: list[SearchResult], limit: int) -> None:
        if self.cache_seconds <= 0:
            return
        self._cache[key] = (time.monotonic() + self.cache_seconds, results, limit)
        self._cache.move_to_end(key)
        while len(self._cache) > _MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def search(self, query: str, limit: int, ctx: RequestContext) -> SearchAnswer:
        """`query` already checked (non-empty, at most MAX_QUERY_CHARS) and `limit` within bounds."""
        query = normalize_query(query)
        ticket = await self.admission.reserve(ctx.principal, ctx.client_ip, tokens=0, cost=0.0)
        key = query.casefold()
        try:
            found = self._cached(key, limit)
            cached = found is not None
            if found is None:
                found = await self._ask(query, limit)
                self._remember(key, found, limit)
        except PortwayError as err:
            self._record(ctx, err.status_code, err.code)
            await self.admission.settle(ticket, Usage(0, 0), 0.0)
            raise
        except BaseException as exc:
            gone = isinstance(exc, asyncio.CancelledError)
            self._record(ctx, 499 if gone else 500, "client_disconnected" if gone else "internal_error")
            await shielded(self.admission.settle(ticket, Usage(0, 0), 0.0))
            raise
        self._record(ctx, 200, None)
        await self._settle(ticket)
        return SearchAnswer(query, self.backend.name, found, cached, ticket.headers)

    async def _ask(self, query: str, limit: int) -> list[SearchResult]:
        try:
            return await self.backend.search(query, limit)
        except SearchFailure as failure:
            raise _ERRORS[failure.kind](failure.message) from None

    async def _settle(self, ticket: Ticket) -> None:
        # A search counts as a request (rpm, daily requests) but spends no tokens and no money.
        await self.admission.settle(ticket, Usage(0, 0), 0.0)

    def _record(self, ctx: RequestContext, status: int, error_code: str | None) -> None:
        self.record(
            UsageRecord(
                ts=time.time(),
                request_id=ctx.request_id,
                principal=ctx.principal.id,
                requested_model=self.backend.name,
                provider=self.backend.name,
                served_model=None,
                status=status,
                latency_ms=(time.monotonic() - ctx.started) * 1000,
                error_code=error_code,
                endpoint="search",
                bytes_in=ctx.body_bytes,
            )
        )

    async def aclose(self) -> None:
        await self.backend.aclose()
