"""Web search backends: one interface (`SearchBackend.search(query, limit)`), two implementations.

- `DdgsBackend`: DuckDuckGo (and the other engines the `ddgs` package aggregates). `ddgs` is synchronous, so
  a search runs in a small thread pool of the backend's own (a hung search cannot take the loop's default
  executor) and is bounded by a timeout. The `DDGS` factory is a constructor argument: tests pass a stub,
  as the internet is the one thing the suite may not reach.
- `SearxngBackend`: a SearxNG instance's JSON API (`GET <url>/search?q=…&format=json`) through portway's own
  HTTP client. The URL comes from the configuration only, never from a client.

Both raise `SearchFailure` with a kind (timeout, unavailable, bad_response); services/search.py turns the
kind into the client's error.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson

from portway.http.client import Transport, WireRequest
from portway.http.errors import TimeoutException, TransportError

log = logging.getLogger("portway.search")

_MAX_TEXT = 2000  # a title or snippet is cut to this many characters
_MAX_URL = 2048
_DDGS_NOTHING = "No results found."  # what ddgs raises when its engines answered with no results


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class FailureKind(enum.Enum):
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    BAD_RESPONSE = "bad_response"


class SearchFailure(Exception):
    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[SearchResult]: ...

    async def aclose(self) -> None: ...


def _text(value: Any, cap: int = _MAX_TEXT) -> str:
    return value[:cap] if isinstance(value, str) else ""


def _results(items: Any, url_field: str, snippet_field: str, limit: int) -> list[SearchResult]:
    """Results from a backend's list of dicts; entries without an http(s) URL are skipped."""
    if not isinstance(items, list):
        raise SearchFailure(FailureKind.BAD_RESPONSE, "the search backend answered without a result list")
    out: list[SearchResult] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        url = _text(item.get(url_field), _MAX_URL)
        if not url.startswith(("http://", "https://")):
            continue
        out.append(SearchResult(_text(item.get("title")), url, _text(item.get(snippet_field))))
        if len(out) >= limit:
            break
    return out


def _default_ddgs() -> Callable[..., Any]:
    try:
        from ddgs import DDGS  # imported on first use: workers that never search do not pay for it
    except ImportError as exc:
        raise SearchFailure(FailureKind.UNAVAILABLE, "the ddgs package is not installed") from exc
    factory: Callable[..., Any] = DDGS
    return factory


class DdgsBackend:
    """`factory(timeout=...)` gives an object whose `text(query, max_results=...)` lists dicts (ddgs.DDGS)."""

    name = "ddgs"

    def __init__(
        self, timeout: float, factory: Callable[..., Any] | None = None, max_threads: int = 4
    ) -> None:
        self.timeout = timeout
        self._factory = factory
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="portway-ddgs")

    def _run(self, query: str, limit: int) -> Any:
        factory = self._factory or _default_ddgs()
        client = factory(timeout=max(1, round(self.timeout)))
        return client.text(query, max_results=limit)

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                found = await loop.run_in_executor(self._pool, self._run, query, limit)
        except TimeoutError as exc:
            raise SearchFailure(FailureKind.TIMEOUT, "the search took too long") from exc
        except SearchFailure:
            raise
        except Exception as exc:  # ddgs raises DDGSException subclasses, and its HTTP client's own errors
            if type(exc).__name__ == "TimeoutException":
                raise SearchFailure(FailureKind.TIMEOUT, "the search took too long") from exc
            if str(exc) == _DDGS_NOTHING:  # every engine answered, none found anything: no failure
                return []
            log.warning("ddgs search failed: %s: %s", type(exc).__name__, exc)
            raise SearchFailure(FailureKind.UNAVAILABLE, "the search backend could not be reached") from exc
        return _results(found, "href", "body", limit)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class SearxngBackend:
    name = "searxng"

    def __init__(self, url: str, transport: Transport, timeout: float) -> None:
        self.url = url.rstrip("/") + "/search"
        self.transport = transport
        self.timeout = timeout

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        params = urlencode({"q": query, "format": "json"})
        headers = {"accept": "application/json", "user-agent": "portway"}
        req = WireRequest("GET", f"{self.url}?{params}", headers, b"")
        try:
            async with await self.transport.send(req, timeout=self.timeout) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutException as exc:
            raise SearchFailure(FailureKind.TIMEOUT, "the search took too long") from exc
        except TransportError as exc:
            log.warning("searxng search failed: %s", type(exc).__name__)
            raise SearchFailure(FailureKind.UNAVAILABLE, "the search backend could not be reached") from exc
        if status != 200:
            # 429/5xx: the instance is there but will not serve now; anything else is a broken answer.
            kind = FailureKind.UNAVAILABLE if status == 429 or status >= 500 else FailureKind.BAD_RESPONSE
            raise SearchFailure(kind, f"the search backend answered with status {status}")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SearchFailure(FailureKind.BAD_RESPONSE, "the search backend answered with no JSON") from exc
        if not isinstance(doc, dict):
            raise SearchFailure(FailureKind.BAD_RESPONSE, "the search backend answered without a result list")
        return _results(doc.get("results"), "url", "content", limit)

    async def aclose(self) -> None:
        return None  # the transport is the runtime's, closed with it


def create_search_backend(
    backend: str, url: str | None, timeout: float, transport: Transport
) -> SearchBackend:
    """The configured backend (`search.backend` of gateway.yaml)."""
    if backend == "searxng":
        if not url:
            raise ValueError("search.url is required for the searxng backend")
        return SearxngBackend(url, transport, timeout)
    return DdgsBackend(timeout)
