"""What every command shares: exit codes, errors without stack traces, settings, options and output.

Exit codes are a contract scripts rely on: 0 ok, 1 the server refused (its message printed), 2 a usage error
(bad arguments, a bad setting, an invalid configuration), 3 the server could not be reached.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from portway.config import GatewayConfig, load_config
from portway.errors import ConfigError
from portway.settings import Settings

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_CONFIG = Path("gateway.yaml")
DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """An expected failure: printed as one line `portway: <message>`, then exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def settings() -> Settings:
    """Settings from the environment; a bad value is one line naming the variable, and exit status 2."""
    try:
        return Settings()
    except ValidationError as err:
        for e in err.errors():
            name = "PORTWAY_" + "_".join(str(p) for p in e["loc"]).upper()
            typer.echo(f"portway: {name}: {e['msg']} (got {e['input']!r})", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def config_path(option: Path | None) -> Path | None:
    """The config file `serve` would use: --config, else PORTWAY_CONFIG, else ./gateway.yaml if it exists."""
    if option is not None:
        return option
    from_env = os.environ.get("PORTWAY_CONFIG")
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load(path: Path | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


# -- options shared by the commands that talk to a running server ------------------------------------------

UrlOption = Annotated[
    str, typer.Option("--url", envvar="PORTWAY_URL", help="the running portway server", show_default=True)
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        "--api-key",
        envvar="PORTWAY_API_KEY",
        help="API key (default: PORTWAY_MASTER_KEY, else <data dir>/master.key when readable)",
        show_default=False,
    ),
]
# `portway usage --key K` filters by virtual key (the spelling), so its own credential is --api-key.
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="PORTWAY_API_KEY",
        help="API key (default: PORTWAY_MASTER_KEY, else <data dir>/master.key when readable)",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]


# -- output ----------------------------------------------------------------------------------------------


def console(stderr: bool = False) -> Console:
    """A console on the current stdout/stderr (made per call: test runners swap the streams)."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 200  # piped: do not wrap ids and numbers at 80 columns
    return out


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def table(
    title: str | None, columns: list[str], rows: list[list[str]], *, right: tuple[str, ...] = ()
) -> Table:
    out = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        out.add_column(name, justify="right" if name in right else "left", overflow="fold")
    for row in rows:
        out.add_row(*row)
    return out


def mapping(value: Any) -> dict[str, Any]:
    """`value` if the server sent an object there, else an empty one (a field missing or null)."""
    return value if isinstance(value, dict) else {}


def cell(value: Any) -> str:
    """A JSON value as table text: nothing for null, lists joined, floats without noise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)
