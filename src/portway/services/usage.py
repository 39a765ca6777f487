"""Usage analytics over the request log: filters, `group_by`, totals, rows, CSV (/admin/usage, /v1/usage).

The API hands in the query parameters as text; this module validates them (a bad value is a 400
`validation_error` naming the parameter), scopes a non-admin caller to its own rows, runs the store's
aggregate and renders the one JSON shape both routes answer (README, "Usage analytics").
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from portway.errors import ValidationError
from portway.identity.auth import Principal
from portway.stores.sql.analytics import GROUPS, ROW_COLUMNS, Stats, UsageAnalytics, UsageFilter

DEFAULT_WINDOW = 7 * 86400.0  # `since` when not given: the last 7 days before `until`
MAX_PAGE = 1000  # rows per JSON page
MAX_EXPORT = 100_000  # rows per CSV export
_RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_YEAR_10000 = 253402300800.0
_STATUS_CLASS = re.compile(r"^([1-5])xx$")
STAT_FIELDS = tuple(f.name for f in fields(Stats))


@dataclass(frozen=True, slots=True)
class UsageParams:
    """The query as the client sent it (text, or None when absent)."""

    key: str | None = None
    user: str | None = None
    model: str | None = None
    provider: str | None = None
    endpoint: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None
    group_by: str | None = None


def parse_time(text: str, now: float, param: str) -> float:
    """ISO 8601 (no zone = UTC), unix seconds, or a span back from now: `90s`, `30m`, `24h`, `7d`, `2w`."""
    value = text.strip()
    rel = _RELATIVE.match(value.lower())
    if rel:
        return max(now - int(rel.group(1)) * _UNITS[rel.group(2)], 0.0)  # "999999w" is all time
    try:
        ts = float(value) if re.fullmatch(r"\d+(\.\d+)?", value) else _iso(value)
    except (ValueError, OverflowError):
        ts = -1.0
    if not 0 <= ts < _YEAR_10000:  # what renders back as ISO 8601 (and fits the column)
        raise ValidationError(
            f"{param}: expected ISO 8601 (2025-01-31T12:00:00Z), unix seconds or a span like 7d or 24h",
            param=param,
        )
    return ts


def _iso(value: str) -> float:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _status_range(text: str | None) -> tuple[int | None, int | None]:
    """`200` (exact), `4xx` (a class), `error` (>= 400) or `ok` (< 400)."""
    if text is None:
        return None, None
    value = text.strip().lower()
    if value.isdigit() and 100 <= int(value) <= 599:
        return int(value), int(value)
    cls = _STATUS_CLASS.match(value)
    if cls:
        base = int(cls.group(1)) * 100
        return base, base + 99
    if value in ("error", "errors"):
        return 400, None
    if value == "ok":
        return None, 399
    raise ValidationError("status: expected a code (429), a class (5xx), 'error' or 'ok'", param="status")


def _text(value: str | None) -> str | None:
    value = value.strip() if value is not None else None
    return value or None


def build_filter(params: UsageParams, caller: Principal | None, now: float | None = None) -> UsageFilter:
    """The rows a query selects; `caller` (for /v1/usage) narrows them to the caller's own."""
    now = time.time() if now is None else now
    until = parse_time(params.until, now, "until") if params.until else now
    since = parse_time(params.since, now, "since") if params.since else until - DEFAULT_WINDOW
    if since >= until:
        raise ValidationError("since must be before until", param="since")
    status_min, status_max = _status_range(_text(params.status))
    principal = owner = None
    if caller is not None:
        # A user (JWT) owns its keys' rows too; a key sees its own rows only.
        if caller.id.startswith("user:") and caller.user_id is not None:
            owner = caller.user_id
        else:
            principal = caller.id
    return UsageFilter(
        since=since,
        until=until,
        principal=principal,
        owner=owner,
        key=_text(params.key),
        user=_text(params.user),
        model=_text(params.model),
        provider=_text(params.provider),
        endpoint=_text(params.endpoint),
        status_min=status_min,
        status_max=status_max,
    )


def check_group_by(group_by: str | None) -> str | None:
    value = _text(group_by)
    if value is not None and value.lower() not in GROUPS:
        raise ValidationError(f"group_by: expected one of {', '.join(GROUPS)}", param="group_by")
    return value.lower() if value is not None else None


def _stats_json(s: Stats) -> dict[str, Any]:
    out = asdict(s)
    out["cost_usd"] = round(s.cost_usd, 8)
    for name in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "ttft_ms_p95"):
        if out[name] is not None:
            out[name] = round(out[name], 3)
    return out


def _group_key(group_by: str, value: Any) -> Any:
    if value is not None and group_by in ("hour", "day"):
        return iso(int(value) * (3600 if group_by == "hour" else 86400))
    return value


def _order(group_by: str, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if group_by in ("hour", "day"):  # a time series: oldest first (ISO UTC strings sort as time)
        return sorted(groups, key=lambda g: g["key"] or "")
    return sorted(groups, key=lambda g: (-g["requests"], str(g["key"])))


def row_json(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["time"] = iso(row["ts"])
    return out


class UsageService:
    def __init__(self, store: UsageAnalytics) -> None:
        self.store = store

    def query(self, params: UsageParams, caller: Principal | None) -> UsageFilter:
        """The validated filter (a 400 for a bad parameter, group_by included)."""
        check_group_by(params.group_by)
        return build_filter(params, caller)

    async def report(
        self, params: UsageParams, caller: Principal | None
    ) -> tuple[UsageFilter, dict[str, Any]]:
        """The usage object: totals and (with `group_by`) one entry per group."""
        group_by = check_group_by(params.group_by)
        flt = build_filter(params, caller)
        totals, groups = await self.store.aggregate(flt, group_by)
        rendered = (
            _order(group_by, [{"key": _group_key(group_by, k), **_stats_json(s)} for k, s in groups])
            if group_by
            else []
        )
        body = {
            "object": "usage",
            "since": iso(flt.since),
            "until": iso(flt.until),
            "group_by": group_by,
            "totals": _stats_json(totals),
            "groups": rendered,
        }
        return flt, body

    async def rows(self, flt: UsageFilter, limit: int, offset: int) -> list[dict[str, Any]]:
        return [row_json(r) for r in await self.store.rows(flt, limit, offset)]

    async def export_rows(self, flt: UsageFilter, limit: int, offset: int) -> AsyncIterator[str]:
        """CSV of the rows (newest first), a chunk of lines at a time."""
        columns = ("time", *ROW_COLUMNS)
        yield _csv_lines([columns])
        batch: list[Iterable[Any]] = []
        async for row in self.store.stream_rows(flt, limit, offset):
            batch.append([row_json(row)[c] for c in columns])
            if len(batch) >= 500:
                yield _csv_lines(batch)
                batch = []
        if batch:
            yield _csv_lines(batch)


def groups_csv(body: dict[str, Any]) -> str:
    """CSV of a report's groups, one line each, headed by the group_by name and the stat names."""
    lines: list[Iterable[Any]] = [(body["group_by"] or "key", *STAT_FIELDS)]
    lines += [[g["key"], *(g[f] for f in STAT_FIELDS)] for g in body["groups"]]
    return _csv_lines(lines)


def _csv_lines(rows: Iterable[Iterable[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        writer.writerow(["" if v is None else _csv_safe(v) for v in row])
    return buf.getvalue()


def _csv_safe(value: Any) -> Any:
    """Model names come from clients: a cell starting with = + - @ would run as a formula in a spreadsheet."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
