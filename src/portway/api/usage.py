"""Usage analytics: `GET /admin/usage` (every row, admins only) and `GET /v1/usage` (the caller's own rows).

Both answer the same JSON object (totals, groups, optional rows) or, with `format=csv` or
`Accept: text/csv`, a CSV download: one line per group with `group_by`, else the rows themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from portway.api.admin import PageOffset
from portway.api.auth import require_admin
from portway.api.common import authenticate, json_response, runtime
from portway.errors import ValidationError
from portway.identity.auth import Principal
from portway.services.usage import (
    MAX_EXPORT,
    MAX_PAGE,
    UsageParams,
    UsageService,
    check_group_by,
    groups_csv,
)

router = APIRouter(tags=["usage"])

_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str | None, Query(max_length=320, pattern=_NO_NUL)]
_FILTERS = (
    "key, user, model, provider, endpoint, status (200, 4xx, error, ok), since/until (ISO 8601, unix, 7d)"
)


def _service(request: Request) -> UsageService:
    service: UsageService = runtime(request).usage_analytics
    return service


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        if fmt.lower() not in ("json", "csv"):
            raise ValidationError("format: expected json or csv", param="format")
        return fmt.lower() == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _csv(body: str | AsyncIterator[str], name: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    if isinstance(body, str):
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
    return StreamingResponse(body, media_type="text/csv; charset=utf-8", headers=headers)


async def _answer(
    request: Request,
    caller: Principal | None,
    params: UsageParams,
    out: Output,
) -> Response:
    service = _service(request)
    limit, offset = out.limit, out.offset
    as_csv = _wants_csv(request, out.fmt)
    if as_csv and check_group_by(params.group_by) is None:
        # Checked before the stream starts, so a bad parameter is a 400, not a cut download.
        export = service.export_rows(service.query(params, caller), limit or MAX_EXPORT, offset)
        return _csv(export, "portway-usage-rows.csv")
    if limit is not None and limit > MAX_PAGE and not as_csv:
        raise ValidationError(
            f"limit: at most {MAX_PAGE} rows per page (CSV exports take more)", param="limit"
        )
    flt, body = await service.report(params, caller)
    if as_csv:
        return _csv(groups_csv(body), f"portway-usage-by-{body['group_by']}.csv")
    if out.rows:
        page = limit or 100
        body.update(rows=await service.rows(flt, page, offset), limit=page, offset=offset)
    return json_response(body, headers={"Cache-Control": "no-store"})


def _params(
    key: Text = None,
    user: Text = None,
    model: Text = None,
    provider: Text = None,
    endpoint: Text = None,
    status: Text = None,
    since: Text = None,
    until: Text = None,
    group_by: Text = None,
) -> UsageParams:
    return UsageParams(key, user, model, provider, endpoint, status, since, until, group_by)


Params = Annotated[UsageParams, Depends(_params)]
Limit = Query(None, ge=1, le=MAX_EXPORT, description=f"rows per page (JSON: at most {MAX_PAGE})")
Format = Query(None, alias="format", max_length=8, description="json (default) or csv")


@dataclass(frozen=True, slots=True)
class Output:
    """How to answer: JSON (with a page of rows when `rows`) or CSV."""

    rows: bool
    limit: int | None
    offset: int
    fmt: str | None


def _output(
    rows: bool = False, limit: int | None = Limit, offset: int = PageOffset, fmt: str | None = Format
) -> Output:
    return Output(rows, limit, offset, fmt)


OutputParams = Annotated[Output, Depends(_output)]


@router.get(
    "/admin/usage",
    summary="Usage of every key and user: filters, group_by=hour|day|model|provider|key|user, CSV",
    description=f"Filters: {_FILTERS}. Admins only.",
    dependencies=[Depends(require_admin)],
)
async def admin_usage(request: Request, params: Params, out: OutputParams) -> Response:
    return await _answer(request, None, params, out)


@router.get(
    "/v1/usage",
    summary="The caller's own usage (same filters, groups and CSV as /admin/usage)",
    description=f"Filters: {_FILTERS}. Only the caller's own requests, whatever the filters say.",
)
async def own_usage(request: Request, params: Params, out: OutputParams) -> Response:
    caller = await authenticate(request)
    return await _answer(request, caller, params, out)
