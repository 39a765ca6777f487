"""`portway usage`: the request log summed by day, model, provider, key or user (`GET /admin/usage`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from portway.cli.client import Server
from portway.cli.common import (
    DEFAULT_URL,
    ApiKeyOption,
    JsonOption,
    UrlOption,
    cell,
    console,
    mapping,
    print_json,
    table,
)

BAR_WIDTH = 24
_EIGHTHS = " ▏▎▍▌▋▊▉"


class GroupBy(StrEnum):
    day = "day"
    model = "model"
    provider = "provider"
    key = "key"
    user = "user"


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a character: `value` out of `largest` over `width` characters."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / largest * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def _int(value: Any) -> str:
    return "" if value is None else f"{int(value):,}"


def _ms(value: Any) -> str:
    return "" if value is None else f"{float(value):.0f}"


def _usd(value: Any) -> str:
    return "" if value is None else f"${float(value):.4f}"


def _row(name: str, g: dict[str, Any], chart: str) -> list[str]:
    return [
        name,
        _int(g.get("requests")),
        chart,
        _int(g.get("prompt_tokens")),
        _int(g.get("completion_tokens")),
        _usd(g.get("cost_usd")),
        _int(g.get("errors")),
        f"{_ms(g.get('latency_ms_p50'))} / {_ms(g.get('latency_ms_p95'))}".strip(" /"),
        f"{_ms(g.get('ttft_ms_p50'))} / {_ms(g.get('ttft_ms_p95'))}".strip(" /"),
    ]


def usage(
    by: Annotated[
        GroupBy, typer.Option("--by", help="group by day, model, provider, key or user")
    ] = GroupBy.day,
    since: Annotated[str, typer.Option(help="how far back: 24h, 7d, 30d, or an ISO 8601 date")] = "7d",
    key: Annotated[str | None, typer.Option("--key", help="only this virtual key (its id)")] = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Requests, tokens, cost, errors and latency from the request log, with a bar chart of requests."""
    with Server.connect(url, api_key) as server:
        answer: dict[str, Any] = server.get("/admin/usage", group_by=by.value, since=since, key=key)
    if json:
        print_json(answer)
        return
    groups = [g for g in answer.get("groups") or [] if isinstance(g, dict)]
    largest = max((float(g.get("requests") or 0) for g in groups), default=0.0)
    rows = [
        _row(cell(g.get("key")) or "(none)", g, bar(float(g.get("requests") or 0), largest)) for g in groups
    ]
    totals = mapping(answer.get("totals"))
    rows.append([f"[bold]{c}[/]" if c else c for c in _row("total", totals, "")])
    columns = [
        "",
        "requests",
        "",
        "prompt tok",
        "completion tok",
        "cost",
        "errors",
        "ms p50/p95",
        "ttft p50/p95",
    ]
    columns[0] = by.value
    title = f"usage by {by.value}, {cell(answer.get('since'))} to {cell(answer.get('until'))}"
    numeric = ("requests", "prompt tok", "completion tok", "cost", "errors", "ms p50/p95", "ttft p50/p95")
    console().print(table(title, columns, rows, right=numeric))
