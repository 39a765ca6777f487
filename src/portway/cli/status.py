"""`portway status` (providers: health, breakers, uptime) and `portway health [--detailed]`."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer

from portway.cli.client import Server
from portway.cli.common import (
    DEFAULT_URL,
    EXIT_REFUSED,
    CliError,
    JsonOption,
    KeyOption,
    UrlOption,
    cell,
    console,
    mapping,
    print_json,
    table,
)

_COLOURS = {"up": "green", "ok": "green", "healthy": "green", "degraded": "yellow", "down": "red"}


def _state(value: Any) -> str:
    text = cell(value)
    colour = _COLOURS.get(text)
    return f"[{colour}]{text}[/]" if colour else text


def _percent(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}%"


def _breakers(provider: dict[str, Any]) -> str:
    """`2 closed, 1 open` from the detail's keys (the summary has none)."""
    keys = provider.get("keys")
    if not isinstance(keys, list):
        return ""
    counts = Counter(str(k.get("breaker")) for k in keys if isinstance(k, dict))
    return ", ".join(f"{n} {state}" for state, n in counts.most_common())


def _fetch_status(server: Server) -> dict[str, Any]:
    """The admin detail when the key may read it, else the public summary (saying why on stderr)."""
    if server.key:
        try:
            detail: dict[str, Any] = server.get("/admin/status")
            return detail
        except CliError as exc:
            if exc.exit_code != EXIT_REFUSED:
                raise
            console(stderr=True).print(f"[dim]showing the public summary: /admin/status: {exc}[/]")
    summary: dict[str, Any] = server.get("/v1/status")
    return summary


def status(json: JsonOption = False, url: UrlOption = DEFAULT_URL, key: KeyOption = None) -> None:
    """Each provider's health: status, uptime over 1 h / 24 h / 7 d, latency, key breakers."""
    with Server.connect(url, key, need_key=False) as server:
        answer = _fetch_status(server)
    if json:
        print_json(answer)
        return
    providers = [p for p in answer.get("providers") or [] if isinstance(p, dict)]
    rows = []
    for p in providers:
        uptime = mapping(p.get("uptime"))
        latency = p.get("latency_ms_p50")
        rows.append(
            [
                cell(p.get("provider")),
                _state(p.get("status")),
                *(_percent(uptime.get(w)) for w in ("1h", "24h", "7d")),
                "" if latency is None else f"{float(latency):.0f} ms",
                _breakers(p),
                cell(p.get("last_checked")),
            ]
        )
    columns = ["provider", "status", "up 1h", "up 24h", "up 7d", "p50", "key breakers", "last checked"]
    if not any(r[6] for r in rows):  # the public summary has no keys
        columns.pop(6)
        rows = [r[:6] + r[7:] for r in rows]
    out = console()
    out.print(f"portway is {_state(answer.get('status'))}")
    out.print(table(None, columns, rows, right=("up 1h", "up 24h", "up 7d", "p50")))


def health(
    detailed: Annotated[
        bool, typer.Option("--detailed", help="also readiness: database, usage writer, Redis")
    ] = False,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Is the server alive (`/health`); with --detailed, ready (`/ready`) too. Not ready: exit 1."""
    with Server.connect(url, key, need_key=False) as server:
        alive: dict[str, Any] = server.get("/health")
        ready: dict[str, Any] | None = server.call("GET", "/ready", ok=(503,)) if detailed else None
    if json:
        print_json(alive if ready is None else {**alive, "ready": ready})
    else:
        out = console()
        out.print(f"{_state(alive.get('status'))}: portway {cell(alive.get('version'))} at {server.url}")
        if ready is not None:
            checks = mapping(ready.get("checks"))
            rows = [[name, _state(value)] for name, value in checks.items()]
            out.print(table(f"ready: {cell(ready.get('ready'))}", ["check", "state"], rows))
    if ready is not None and ready.get("ready") is not True:
        raise typer.Exit(EXIT_REFUSED)
