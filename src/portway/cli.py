"""The `portway` command."""

from __future__ import annotations

import asyncio
import copy
import logging
import logging.config
import os
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError

from portway import __version__
from portway.config import GatewayConfig, load_config
from portway.errors import ConfigError
from portway.identity.auth import MASTER_KEY_FILE, ensure_master_key
from portway.settings import Settings

app = typer.Typer(help="portway: a self-hosted, OpenAI-compatible AI gateway.", no_args_is_help=True)
DEFAULT_CONFIG = Path("gateway.yaml")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"portway {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """portway: a self-hosted, OpenAI-compatible AI gateway."""


def _settings() -> Settings:
    """Settings from the environment; a bad value is one line naming the variable, and exit status 2."""
    try:
        return Settings()
    except ValidationError as err:
        for e in err.errors():
            name = "PORTWAY_" + "_".join(str(p) for p in e["loc"]).upper()
            typer.echo(f"portway: {name}: {e['msg']} (got {e['input']!r})", err=True)
        raise typer.Exit(2) from None


def _load(path: Path | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"portway: {exc}", err=True)
        raise typer.Exit(2) from None


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus portway's loggers at `level` and everything else at WARNING or above.

    Handed to uvicorn too, so each worker process (which starts with no logging set up) logs the same way.
    """
    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    number = LOG_LEVELS[level]
    cfg: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["portway"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    cfg["handlers"]["portway"] = {
        "class": "logging.StreamHandler",
        "formatter": "portway",
        "stream": "ext://sys.stderr",
    }
    cfg["loggers"]["portway"] = {"handlers": ["portway"], "level": number, "propagate": False}
    # Libraries' INFO (Alembic's migration steps among them) is noise in a server's log.
    cfg["root"] = {"handlers": ["portway"], "level": max(number, logging.WARNING)}
    return cfg


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


def _prepare(settings: Settings) -> GatewayConfig:
    """Checks and one-time work done once, before any worker starts: config, master key, migrations."""
    from portway.stores.sql.database import Database

    cfg = _load(settings.config)
    env_key = settings.master_key.get_secret_value() if settings.master_key else None
    ensure_master_key(settings.data_dir, env_key)

    async def migrate() -> None:
        db = Database(settings.resolved_database_url())
        try:
            await db.migrate()
        finally:
            await db.aclose()

    asyncio.run(migrate())
    typer.echo(_summary(settings, cfg, env_key is not None), err=True)
    return cfg


@app.command()
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
    settings = _settings()
    log_config = _log_config(settings.log_level)
    logging.config.dictConfig(log_config)
    server = _prepare(settings).server
    # The protocol is a partial with the server limits: it pickles into the worker processes.
    protocol: Any = protocol_factory(server) if settings.http == "portway" else settings.http
    uvicorn.run(
        "portway.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=access_log,
        log_config=log_config,
        log_level=settings.log_level,
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


@app.command("config")
def check_config(
    config: Annotated[Path | None, typer.Option(help="gateway.yaml (env PORTWAY_CONFIG)")] = None,
) -> None:
    """Validate the configuration and print the resolved providers and aliases (no secrets)."""
    path = config or _settings().config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    cfg = _load(path)
    for name, p in cfg.providers.items():
        state = "enabled" if p.enabled else "disabled (no API key)"
        typer.echo(f"provider {name}: type={p.type} keys={len(p.api_keys)} {state}")
    for alias, targets in cfg.models.items():
        typer.echo(f"alias {alias}: {' -> '.join(targets)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
