"""GET /v1/search through a running portway against a fake SearxNG (tests/fakes/searxng.py): the answer's
shape, `limit`, the short cache (`x-portway-cache`), auth, bad input, each backend failure's status and
code, the request log and the caller's rate limit. The ddgs backend is checked without the internet: a stub
`DDGS` factory for the mapping of its results and errors, and the real package behind a dead proxy for its
wiring to a clear 503."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from portway.errors import SearchUnavailable
from portway.identity.auth import MASTER
from portway.providers.search import DdgsBackend, FailureKind, SearchFailure, SearchResult
from tests.fakes.searxng import RESULTS_PER_QUERY, FakeSearxng
from tests.integration.server import PortwayProcess, free_port
from tests.integration.test_limits_gateway import create_key
from tests.integration.test_responses_api import wait_row

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module")
def searxng() -> Iterator[FakeSearxng]:
    with FakeSearxng() as fake:
        yield fake


@pytest.fixture(scope="module")
def gw(searxng: FakeSearxng, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = {"search": {"backend": "searxng", "url": searxng.url + "/", "timeout": 1, "cache_seconds": 60}}
    proc = PortwayProcess(tmp_path_factory.mktemp("search"), cfg)
    yield proc
    proc.stop()


def _search(gw: PortwayProcess, key: str | None = None, **params: Any) -> httpx.Response:
    return HTTP.get(gw.url + "/v1/search", params=params, headers=gw.headers(key), timeout=10)


def test_answers_results_in_portways_shape(gw: PortwayProcess, searxng: FakeSearxng) -> None:
    r = _search(gw, q="  python   asyncio ", limit=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "search"
    assert body["query"] == "python asyncio"  # whitespace normalised
    assert body["backend"] == "searxng"
    assert body["results"] == [
        {
            "title": f"python asyncio - result {i}",
            "url": f"https://example.org/python-asyncio/{i}",
            "snippet": f"Snippet {i} about python asyncio.",
        }
        for i in range(3)
    ]
    assert r.headers["x-portway-cache"] == "miss"
    assert searxng.queries[-1]["format"] == ["json"]


def test_entries_without_an_http_url_are_skipped(gw: PortwayProcess) -> None:
    r = _search(gw, q="skipping entries", limit=20)
    urls = [item["url"] for item in r.json()["results"]]
    assert len(urls) == RESULTS_PER_QUERY  # the entry without a URL and the javascript: one are gone
    assert all(u.startswith("https://example.org/") for u in urls)


def test_default_limit_is_five(gw: PortwayProcess) -> None:
    assert len(_search(gw, q="default limit").json()["results"]) == 5


def test_a_repeated_query_is_answered_from_the_cache(gw: PortwayProcess, searxng: FakeSearxng) -> None:
    first = _search(gw, q="Cache Me", limit=4)
    again = _search(gw, q="cache   me", limit=2)  # same query (case, spaces), fewer results: served
    assert first.headers["x-portway-cache"] == "miss"
    assert again.headers["x-portway-cache"] == "hit"
    assert again.json()["results"] == first.json()["results"][:2]
    assert searxng.calls("Cache Me") == 1 and searxng.calls("cache me") == 0
    more = _search(gw, q="cache me", limit=6)  # more than were fetched: asked again
    assert more.headers["x-portway-cache"] == "miss"
    assert len(more.json()["results"]) == 6


def test_needs_a_key(gw: PortwayProcess) -> None:
    r = HTTP.get(gw.url + "/v1/search", params={"q": "x"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "x", "limit": "0"}, "limit"),
        ({"q": "x", "limit": "21"}, "limit"),
        ({"q": "x", "limit": "ten"}, "limit"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(gw: PortwayProcess, params: dict[str, str], param: str) -> None:
    r = _search(gw, **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("fail500 now", 503, "search_unavailable"),
        ("garbage please", 502, "search_error"),
        ("slow search", 504, "search_timeout"),
    ],
)
def test_backend_failures_have_stable_codes(gw: PortwayProcess, query: str, status: int, code: str) -> None:
    started = time.monotonic()
    r = _search(gw, q=query, **{"x-request-id": "ignored"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "upstream_error"
    assert "Traceback" not in r.text and "127.0.0.1" not in error["message"]
    assert time.monotonic() - started < 2.5  # the 1 s search.timeout, not the fake's 3 s


def test_each_search_has_a_request_log_row(gw: PortwayProcess) -> None:
    r = HTTP.get(
        gw.url + "/v1/search",
        params={"q": "logged query"},
        headers={**gw.headers(), "x-request-id": "search-log-1"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "search-log-1"
    row = wait_row(gw, "search-log-1")
    assert row["endpoint"] == "search" and row["provider"] == "searxng" and row["status"] == 200
    assert row["cost_usd"] == 0 and row["principal"] == "master"
    failed = HTTP.get(
        gw.url + "/v1/search",
        params={"q": "fail500 logged"},
        headers={**gw.headers(), "x-request-id": "search-log-2"},
    )
    assert failed.status_code == 503
    assert wait_row(gw, "search-log-2")["error_code"] == "search_unavailable"


def test_searches_count_against_the_callers_rate_limit(gw: PortwayProcess) -> None:
    key = create_key(gw, rpm=2)
    codes = [_search(gw, key, q=f"limited {i}").status_code for i in range(3)]
    assert codes == [200, 200, 429]
    refused = _search(gw, key, q="limited 0")  # a cached answer is limited too
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


# -- the ddgs backend, without the internet ------------------------------------------------------------


class _StubDDGS:
    """Stands in for ddgs.DDGS: answers `text` from `answer` (a list, or an exception to raise)."""

    calls: list[tuple[str, int, int]] = []

    def __init__(self, answer: Any, *, timeout: int) -> None:
        self.answer = answer
        self.timeout = timeout

    def text(self, query: str, *, max_results: int) -> list[dict[str, Any]]:
        _StubDDGS.calls.append((query, max_results, self.timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.answer == "hang":
            time.sleep(1.0)
        return self.answer  # type: ignore[no-any-return]


class TimeoutException(Exception):
    pass


def _ddgs(answer: Any, timeout: float = 2.0) -> DdgsBackend:
    return DdgsBackend(timeout, factory=functools.partial(_StubDDGS, answer))


async def test_ddgs_results_are_mapped() -> None:
    found = [
        {"title": "A", "href": "https://a.example/", "body": "first"},
        {"title": "no link", "body": "skipped"},
        {"title": "B", "href": "http://b.example/x", "body": "second"},
        {"title": "C", "href": "https://c.example/", "body": "third"},
    ]
    backend = _ddgs(found)
    try:
        results = await backend.search("what", 2)
    finally:
        await backend.aclose()
    assert results == [
        SearchResult("A", "https://a.example/", "first"),
        SearchResult("B", "http://b.example/x", "second"),
    ]
    assert _StubDDGS.calls[-1] == ("what", 2, 2)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (RuntimeError("ConnectError: connection refused"), FailureKind.UNAVAILABLE),
        (TimeoutException("engine timed out"), FailureKind.TIMEOUT),
        ("hang", FailureKind.TIMEOUT),
        ({"not": "a list"}, FailureKind.BAD_RESPONSE),
    ],
)
async def test_ddgs_failures_have_kinds(answer: Any, kind: FailureKind) -> None:
    backend = _ddgs(answer, timeout=0.3)
    try:
        with pytest.raises(SearchFailure) as failure:
            await backend.search("q", 3)
    finally:
        await backend.aclose()
    assert failure.value.kind is kind


async def test_ddgs_finding_nothing_is_an_empty_list() -> None:
    backend = _ddgs(RuntimeError("No results found."))  # ddgs raises this when every engine found nothing
    try:
        assert await backend.search("zzzz", 3) == []
    finally:
        await backend.aclose()


async def test_the_real_ddgs_behind_a_dead_proxy_is_a_clear_503() -> None:
    """The ddgs package itself, wired as portway wires it, pointed at a closed local port as its proxy: no
    byte leaves the machine, and the failure reaches the client as `search_unavailable`."""
    from ddgs import DDGS

    from portway.config import LimitsConfig
    from portway.limits.admission import Admission
    from portway.limits.memory import MemoryCounters
    from portway.services.chat import RequestContext
    from portway.services.search import SearchService
    from portway.usage.cost import Pricing

    backend = DdgsBackend(3.0, factory=functools.partial(DDGS, proxy=f"http://127.0.0.1:{free_port()}"))
    records: list[Any] = []
    service = SearchService(
        backend, Admission(MemoryCounters(), Pricing({}), LimitsConfig()), records.append, 0
    )
    ctx = RequestContext("rid-ddgs", MASTER, time.monotonic())
    try:
        with pytest.raises(SearchUnavailable) as err:
            await asyncio.wait_for(service.search("portway", 3, ctx), 10)
    finally:
        await service.aclose()
    assert err.value.status_code == 503 and err.value.code == "search_unavailable"
    assert records[0].endpoint == "search" and records[0].status == 503
