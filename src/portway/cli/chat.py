"""`portway chat`: one prompt (argument or stdin), or an interactive session, streamed from a running server.

On a terminal the answer is shown live as tokens arrive and rendered as Markdown once complete; piped, each
token is written (and flushed) as it arrives, so `portway chat hi | cat` streams too.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from portway.cli.client import Server
from portway.cli.common import DEFAULT_URL, EXIT_USAGE, CliError, KeyOption, UrlOption, console

HELP = "/model NAME switches the model, /clear forgets the conversation, /exit (or Ctrl-D) leaves"


def _stream(server: Server, model: str, messages: list[dict[str, str]], out: Console, markdown: bool) -> str:
    """Streams one answer to `out`; returns its text. Ctrl-C stops it, keeping what arrived."""
    pieces: list[str] = []
    deltas = server.stream_chat({"model": model, "messages": messages})
    if not out.is_terminal:
        for delta in deltas:
            pieces.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        return "".join(pieces)
    with Live(Text(""), console=out, refresh_per_second=15, vertical_overflow="visible") as live:
        try:
            for delta in deltas:
                pieces.append(delta)
                live.update(Text("".join(pieces)))
        finally:
            text = "".join(pieces)
            live.update(Markdown(text) if markdown and text else Text(text))
    return text


def _start(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def _command(line: str, state: dict[str, Any], out: Console) -> bool:
    """Runs one /command; False when the session should end."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/clear":
        state["history"] = _start(state["system"])
        out.print("[dim]conversation cleared[/]")
    elif name == "/model" and arg:
        state["model"] = arg
        out.print(f"[dim]model: {arg}[/]")
    elif name == "/model":
        out.print(f"[dim]model: {state['model']}[/]")
    else:
        out.print(f"[yellow]unknown command {name}[/]: {HELP}")
    return True


def _interactive(server: Server, model: str, system: str | None, markdown: bool) -> None:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  # line editing and history for input()
    out = console()
    state: dict[str, Any] = {"model": model, "system": system, "history": _start(system)}
    out.print(f"[dim]portway chat at {server.url}: {HELP}[/]")
    while True:
        try:
            line = out.input(f"[bold cyan]{state['model']}>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            out.print()
            return
        if not line:
            continue
        if line.startswith("/"):
            if not _command(line, state, out):
                return
            continue
        history: list[dict[str, str]] = state["history"]
        history.append({"role": "user", "content": line})
        try:
            answer = _stream(server, state["model"], history, out, markdown)
        except CliError as exc:
            history.pop()  # the turn did not happen: sending it again must not repeat it
            out.print(f"[red]portway: {exc}[/]")
            continue
        except KeyboardInterrupt:
            out.print("[dim](interrupted)[/]")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def chat(
    prompt: Annotated[
        list[str] | None, typer.Argument(help="the prompt; none: read stdin, or chat interactively")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="alias or provider/model")] = "fast",
    system: Annotated[str | None, typer.Option("--system", "-s", help="a system prompt")] = None,
    markdown: Annotated[bool, typer.Option(help="render the answer as Markdown on a terminal")] = True,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Chat through a running server: one-shot, piped (`echo hi | portway chat`) or interactive."""
    text = " ".join(prompt or []).strip()
    piped = sys.stdin is not None and not sys.stdin.isatty()
    with Server.connect(url, key) as server:
        if not text and not piped:
            _interactive(server, model, system, markdown)
            return
        if piped:
            stdin = sys.stdin.read().strip()
            # `cat notes.md | portway chat summarize`: the piped text first, then the instruction.
            text = f"{stdin}\n\n{text}".strip() if text else stdin
        if not text:
            raise CliError(
                "nothing to send: give a prompt, pipe one in, or run `portway chat` alone", EXIT_USAGE
            )
        _stream(server, model, [*_start(system), {"role": "user", "content": text}], console(), markdown)
