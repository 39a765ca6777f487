"""The `portway` command."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from portway.config import load_config
from portway.errors import ConfigError
from portway.identity.auth import MASTER_KEY_FILE, ensure_master_key
from portway.settings import Settings

app = typer.Typer(help="portway: a self-hosted, OpenAI-compatible AI gateway.", no_args_is_help=True)
DEFAULT_CONFIG = Path("gateway.yaml")


@app.callback()
def _root() -> None:
    """portway: a self-hosted, OpenAI-compatible AI gateway."""


def _prepare(settings: Settings) -> None:
    """Checks and one-time work done once, before any worker starts: config, master key, migrations."""
    from portway.stores.sql.database import Database

    try:
        cfg = load_config(settings.config)
    except ConfigError as exc:
        typer.echo(f"portway: {exc}", err=True)
        raise typer.Exit(2) from None
    env_key = settings.master_key.get_secret_value() if settings.master_key else None
    ensure_master_key(settings.data_dir, env_key)
    if env_key is None:
        where = (settings.data_dir / MASTER_KEY_FILE).resolve()
        typer.echo(f"portway: master key is in {where} (set PORTWAY_MASTER_KEY to choose your own)", err=True)

    async def migrate() -> None:
        db = Database(settings.resolved_database_url())
        try:
            await db.migrate()
        finally:
            await db.aclose()

    asyncio.run(migrate())
    enabled = ", ".join(cfg.enabled_providers()) or "none"
    typer.echo(f"portway: providers enabled: {enabled}; aliases: {', '.join(cfg.models) or 'none'}", err=True)


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
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _prepare(settings)
    server = load_config(settings.config).server  # checked by _prepare
    # The protocol is a partial with the server limits: it pickles into the worker processes.
    protocol: Any = protocol_factory(server) if settings.http == "portway" else settings.http
    uvicorn.run(
        "portway.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
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
    path = config or Settings().config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        typer.echo(f"portway: {exc}", err=True)
        raise typer.Exit(2) from None
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
