"""GET /v1/search?q=…&limit=…: web search behind the configured backend (services/search.py)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from portway.api.common import authenticate, json_response, request_context, runtime
from portway.errors import ValidationError
from portway.services.search import MAX_QUERY_CHARS

router = APIRouter(tags=["search"])

DEFAULT_LIMIT = 5


def _query(raw: str | None) -> str:
    if raw is None or not raw.strip():
        raise ValidationError("q: a search query is required", param="q")
    if len(raw) > MAX_QUERY_CHARS:
        raise ValidationError(f"q: at most {MAX_QUERY_CHARS} characters", param="q")
    if "\x00" in raw:
        raise ValidationError("q: must not contain NUL characters", param="q")
    return raw


def _limit(raw: str | None, most: int) -> int:
    if raw is None or raw == "":
        return min(DEFAULT_LIMIT, most)
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ValidationError(f"limit: a whole number from 1 to {most}", param="limit")
    return int(raw)


@router.get(
    "/v1/search",
    summary="Search the web",
    description="Results of the configured backend (`search.backend`: ddgs or searxng) as "
    '`{"object": "search", "query", "backend", "results": [{"title", "url", "snippet"}]}`; `limit` '
    "defaults to 5 (at most `search.max_limit`). Answers are cached for `search.cache_seconds` "
    "(`x-portway-cache: hit|miss`). Limited like every call (per IP, key, user).",
)
async def search(request: Request) -> Response:
    started = time.monotonic()
    principal = await authenticate(request)
    rt = runtime(request)
    params = request.query_params
    query = _query(params.get("q"))
    limit = _limit(params.get("limit"), rt.cfg.search.max_limit)
    ctx = request_context(request, principal, started, 0, endpoint="search")
    answer = await rt.search.search(query, limit, ctx)
    headers = {**answer.headers, "x-request-id": ctx.request_id}
    headers["x-portway-cache"] = "hit" if answer.cached else "miss"
    return json_response(answer.to_dict(), headers=headers)
