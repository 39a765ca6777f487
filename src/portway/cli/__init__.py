"""The `portway` command: `serve`, and a client for everything a running server's API does.

One module per command group; `common.py` holds exit codes, options and output, `client.py` the HTTP client.
Every expected failure is a `CliError`, printed as one line by the root group (`_Group.invoke`) with its
exit code, so no command prints a stack trace for it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from portway import __version__
from portway.cli import admin, chat, configfile, models, status, usage
from portway.cli.common import CliError
from portway.cli.serve import _hide_password, _log_config, _summary, serve

__all__ = ["_hide_password", "_log_config", "_summary", "app", "main"]


class _Group(TyperGroup):
    # Any: newer Typers vendor their own click, older ones use click's Context.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            typer.echo(f"portway: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="portway: a self-hosted, OpenAI-compatible AI gateway.",
    no_args_is_help=True,
    # An unexpected error's traceback must not print local variables: they hold API keys.
    pretty_exceptions_show_locals=False,
)


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


app.command()(serve)
app.command()(chat.chat)
app.command("models")(models.models)
app.command("status")(status.status)
app.command("health")(status.health)
app.command("usage")(usage.usage)
app.command("init")(configfile.init)
app.add_typer(configfile.app, name="config")
app.add_typer(admin.keys, name="keys")
app.add_typer(admin.policies, name="policies")
app.add_typer(admin.users, name="users")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
