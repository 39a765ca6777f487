"""`portway serve`: checks, one-time work, the start-up summary, then uvicorn with portway's protocol."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console

from portway import __version__
from portway.cli.common import DEFAULT_CONFIG, console, load, settings
from portway.config import GatewayConfig
from portway.identity.auth import MASTER_KEY_FILE, ensure_master_key
from portway.settings import Settings
from portway.telemetry import prepare_serve


def _log_config(level: str) -> dict[str, Any]:
    """The text logging config at `level` (portway.telemetry.logs.log_config is the one logging setup)."""
    from portway.telemetry.logs import log_config

    return log_config(level)


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _summary(settings: Settings, cfg: GatewayConfig, env_key: bool) -> str:
    """What a new user needs to know once portway is up: where, what it serves, where its state is."""
    providers = []
    for name, p in cfg.providers.items():
        if not p.enabled:
            providers.append(f"{name} (disabled: no API key)")
        elif p.api_keys:
            providers.append(f"{name} ({len(p.api_keys)} key{'s' if len(p.api_keys) > 1 else ''})")
        else:
            providers.append(f"{name} (no key needed)")
    if env_key:
        master = "from PORTWAY_MASTER_KEY"
    else:
        where = (settings.data_dir / MASTER_KEY_FILE).resolve()
        master = f"{where} (set PORTWAY_MASTER_KEY to choose your own)"
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        f"portway {__version__} on {url} ({settings.workers} worker{'s' if settings.workers > 1 else ''})",
        f"  providers:  {', '.join(providers) or 'none'}",
        f"  aliases:    {', '.join(cfg.models) or 'none'}",
        f"  database:   {_hide_password(settings.resolved_database_url())}",
        f"  counters:   {_hide_password(settings.redis_url) if settings.redis_url else 'in process'}",
        f"  master key: {master}",
        f"  API docs:   {url}/docs",
    ]
    return "\n".join(lines)


def _show_summary(text: str) -> None:
    """A panel on a terminal; the plain lines in a log (a log keeps the text greppable)."""
    err = console(stderr=True)
    if err.is_terminal:
        from rich.panel import Panel

        first, _, rest = text.partition("\n")
        err.print(Panel(rest, title=f"[bold]{first}[/]", title_align="left", expand=False))
    else:
        typer.echo(text, err=True)


def _prepare(settings: Settings) -> GatewayConfig:
    """Checks and one-time work done once, before any worker starts: config, master key, migrations."""
    from portway.stores.sql.database import Database

    cfg = load(settings.config)
    env_key = settings.master_key.get_secret_value() if settings.master_key else None
    ensure_master_key(settings.data_dir, env_key)

    async def migrate() -> None:
        db = Database(settings.resolved_database_url())
        try:
            await db.migrate()
        finally:
            await db.aclose()

    asyncio.run(migrate())
    _show_summary(_summary(settings, cfg, env_key is not None))
    return cfg


def _progress_until_up(settings: Settings, cfg: GatewayConfig) -> None:
    """On a terminal, a spinner until the workers answer /health, then one while local models load (GET
    /ready lists the providers still warming up), and a line when they are in."""
    err = console(stderr=True)
    if not err.is_terminal:
        return
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    threading.Thread(
        target=_watch_start, args=(err, base, settings), name="portway-startup", daemon=True
    ).start()


def _watch_start(err: Console, base: str, settings: Settings) -> None:
    # Rich's status would swap sys.stderr for a proxy while it runs; the workers' log handlers, made by
    # uvicorn meanwhile, would keep writing to that proxy, and lines after the spinner were lost. This
    # spinner redirects nothing: it only redraws its own line.
    from rich.live import Live
    from rich.spinner import Spinner

    until = time.monotonic() + 600
    loaded = ""
    spinner = Spinner("dots", "starting workers")
    with (
        httpx.Client(timeout=1) as http,
        Live(spinner, console=err, transient=True, redirect_stdout=False, redirect_stderr=False),
    ):
        while time.monotonic() < until and not _answers(http, base + "/health"):
            time.sleep(0.2)
        loading = _loading(http, base)
        if loading:
            started = time.monotonic()
            spinner.update(text=f"loading {', '.join(loading)} (first requests to it wait until it is in)")
            while time.monotonic() < until and loading:
                time.sleep(0.3)
                loading = _loading(http, base)
            loaded = f"; local models loaded in {time.monotonic() - started:.1f} s"
    err.print(f"[green]ready[/] on http://{settings.host}:{settings.port}{loaded}")


def _answers(http: httpx.Client, url: str) -> bool:
    try:
        return http.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _loading(http: httpx.Client, base: str) -> list[str]:
    """The providers /ready says are still warming up ([] once all are in, or if it cannot be read)."""
    try:
        names = http.get(base + "/ready").json().get("loading")
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def serve(
    config: Annotated[Path | None, typer.Option(help="gateway.yaml (env PORTWAY_CONFIG)")] = None,
    host: Annotated[
        str | None, typer.Option(help="bind address (env PORTWAY_HOST, default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (env PORTWAY_PORT, default 8080)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (env PORTWAY_WORKERS)")] = None,
    access_log: Annotated[bool, typer.Option(help="log every request line")] = False,
) -> None:
    """Serve the gateway."""
    import uvicorn

    from portway.http.server import protocol_factory

    # Workers are separate processes that build their own Settings from the environment: pass options there.
    for name, value in (("CONFIG", config), ("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"PORTWAY_{name}"] = str(value)
    if "PORTWAY_CONFIG" not in os.environ and DEFAULT_CONFIG.is_file():
        os.environ["PORTWAY_CONFIG"] = str(DEFAULT_CONFIG.resolve())
    current = settings()
    log_config = prepare_serve(current)  # PORTWAY_LOG_FORMAT, and the metrics directory for several workers
    logging.config.dictConfig(log_config)
    cfg = _prepare(current)
    server = cfg.server
    _progress_until_up(current, cfg)
    # The protocol is a partial with the server limits: it pickles into the worker processes.
    protocol: Any = protocol_factory(server) if current.http == "portway" else current.http
    uvicorn.run(
        "portway.app:app_from_env",
        factory=True,
        host=current.host,
        port=current.port,
        workers=current.workers,
        access_log=access_log,
        log_config=log_config,
        log_level=current.log_level,
        timeout_graceful_shutdown=30,
        # uvicorn would take X-Forwarded-For from 127.0.0.1 as the client (FORWARDED_ALLOW_IPS) without
        # checking it is an address; portway reads it itself, from server.trusted_proxies only.
        proxy_headers=False,
        server_header=False,  # no "server: uvicorn" on every answer: it only tells scanners what runs here
        http=protocol,  # see http_server.py
        # uvicorn refuses (503, close) once this connection or task count, the new one included, is reached.
        limit_concurrency=server.max_connections + 1,
        timeout_keep_alive=server.keepalive_timeout,  # type: ignore[arg-type]  # a float works: a timer delay
        h11_max_incomplete_event_size=server.max_header_bytes,  # the head cap in h11 mode
        ws="none",  # no websocket routes: do not import a websocket library into every worker
        lifespan="on",
    )
