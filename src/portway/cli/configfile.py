"""`portway config validate|show|get|set` and `portway init`: the config file, without a running server.

Each takes `--config FILE`, found as `serve` finds it (--config, PORTWAY_CONFIG, ./gateway.yaml). `show` and
`get` print the resolved configuration (defaults filled in, ${VAR}s replaced) with secrets masked; `set`
edits the file itself with ruamel.yaml's round trip, so comments and ${VAR} references stay as written, and
writes it only if the result is valid.
"""

from __future__ import annotations

import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from portway.cli.common import (
    DEFAULT_CONFIG,
    EXIT_USAGE,
    CliError,
    JsonOption,
    cell,
    config_path,
    console,
    print_json,
)
from portway.cli.serve import _hide_password
from portway.config import _DEFAULT_PROVIDERS, GatewayConfig, default_config, interpolate

app = typer.Typer(help="Check, show and edit the configuration (gateway.yaml).", invoke_without_command=True)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="gateway.yaml (env PORTWAY_CONFIG, else ./gateway.yaml)")
]
# Masked wherever they appear as a field name: values of these are credentials.
_SECRET_NAME = re.compile(r"key|token|secret|password|authorization|cookie|credential", re.IGNORECASE)


def _read_raw(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read config file {path}: {exc.strerror}", EXIT_USAGE) from None
    except yaml.YAMLError as exc:
        raise CliError(f"config file {path} is not valid YAML: {exc}", EXIT_USAGE) from None


def _check(raw: Any) -> tuple[GatewayConfig | None, list[tuple[str, str]]]:
    """The config, or every error found, each with its dotted path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [("(top level)", "must be a mapping")]
    try:
        return GatewayConfig.model_validate(interpolate(raw, os.environ)), []
    except ValidationError as err:
        return None, [(".".join(str(p) for p in e["loc"]) or "(top level)", e["msg"]) for e in err.errors()]


def _resolved(config: Path | None) -> tuple[Path | None, GatewayConfig]:
    path = config_path(config)
    if path is None:
        return None, default_config(os.environ)
    cfg, errors = _check(_read_raw(path))
    if cfg is None:
        lines = "\n".join(f"  {where}: {msg}" for where, msg in errors)
        raise CliError(f"invalid configuration in {path}:\n{lines}", EXIT_USAGE)
    return path, cfg


def mask(value: Any, name: str = "") -> Any:
    """A config tree with credentials replaced by `****` + their last 4 characters, URL passwords hidden."""
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, name) for v in value]
    if isinstance(value, str) and value and _SECRET_NAME.search(name):
        return "****" + value[-4:] if len(value) >= 16 else "****"
    if isinstance(value, str) and "://" in value:
        return _hide_password(value)
    return value


def _public(cfg: GatewayConfig) -> dict[str, Any]:
    tree: dict[str, Any] = cfg.model_dump(mode="json")
    # Alias names and targets are not credentials, whatever they are called ("monkey" contains "key").
    return {k: v if k == "models" else mask(v, k) for k, v in tree.items()}


def _walk(tree: Any, dotted: str) -> Any:
    """The value at a dotted path; keys with dots in them match too (the longest key first)."""
    parts, node, i = dotted.split("."), tree, 0
    while i < len(parts):
        if isinstance(node, dict):
            for j in range(len(parts), i, -1):
                if (name := ".".join(parts[i:j])) in node:
                    node, i = node[name], j
                    break
            else:
                raise CliError(f"no setting {dotted!r} (see `portway config show`)", EXIT_USAGE)
        elif isinstance(node, list) and parts[i].isdigit() and int(parts[i]) < len(node):
            node, i = node[int(parts[i])], i + 1
        else:
            raise CliError(f"no setting {dotted!r} (see `portway config show`)", EXIT_USAGE)
    return node


def _print_tree(value: Any) -> None:
    if isinstance(value, dict | list):
        typer.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n"))
    else:
        typer.echo("null" if value is None else cell(value) if not isinstance(value, str) else value)


@app.callback()
def _config(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Check, show and edit the configuration; alone, the same as `portway config validate`."""
    if ctx.invoked_subcommand is None:
        validate(config=config, json=False)


@app.command()
def validate(config: ConfigOption = None, json: JsonOption = False) -> None:
    """Check the configuration: every error with its path (exit 2), else the providers and aliases."""
    path = config_path(config)
    raw = {} if path is None else _read_raw(path)
    cfg, errors = (default_config(os.environ), []) if path is None else _check(raw)
    source = str(path) if path else "built-in defaults (no config file)"
    disabled = [] if cfg is None else [n for n, p in cfg.providers.items() if not p.enabled]
    if json:
        print_json(
            {
                "file": str(path) if path else None,
                "valid": cfg is not None,
                "errors": [{"path": where, "message": msg} for where, msg in errors],
                "disabled_providers": disabled,
            }
        )
    elif cfg is None:
        typer.echo(f"{source}: {len(errors)} error{'s' if len(errors) > 1 else ''}")
        for where, msg in errors:
            typer.echo(f"  {where}: {msg}")
    else:
        typer.echo(f"{source}: valid")
        for name, p in cfg.providers.items():
            state = "enabled" if p.enabled else "disabled (no API key)"
            typer.echo(f"provider {name}: type={p.type} keys={len(p.api_keys)} {state}")
        for alias, targets in cfg.models.items():
            typer.echo(f"alias {alias}: {' -> '.join(targets)}")
    if cfg is None:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def show(config: ConfigOption = None, json: JsonOption = False) -> None:
    """The resolved configuration, every default filled in, secrets masked."""
    path, cfg = _resolved(config)
    tree = _public(cfg)
    if json:
        print_json(tree)
        return
    typer.echo(f"# {path or 'built-in defaults (no config file)'}, resolved; secrets masked")
    _print_tree(tree)


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="a dotted path, e.g. routing.deadline or providers.groq.type")],
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """One setting of the resolved configuration (secrets masked)."""
    value = _walk(_public(_resolved(config)[1]), key)
    if json:
        print_json(value)
    else:
        _print_tree(value)


def _round_trip() -> YAML:
    rt = YAML()  # round trip: comments, order, quoting and ${VAR}s are kept
    rt.preserve_quotes = True
    rt.width = 110
    return rt


def _assign(tree: Any, dotted: str, value: Any) -> None:
    """Sets `value` at a dotted path, making the mappings on the way; an existing key with dots matches."""
    parts, node, i = dotted.split("."), tree, 0
    while True:
        if isinstance(node, list):
            if not parts[i].isdigit() or int(parts[i]) >= len(node):
                raise CliError(f"{'.'.join(parts[: i + 1])}: no such list item", EXIT_USAGE)
            j, name = i + 1, int(parts[i])
        elif isinstance(node, dict):
            j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), i + 1)
            name = ".".join(parts[i:j])  # type: ignore[assignment]
        else:
            raise CliError(f"{'.'.join(parts[:i])} is not a mapping: cannot set {dotted!r}", EXIT_USAGE)
        if j == len(parts):
            node[name] = value
            return
        if isinstance(node, dict) and name not in node:
            node[name] = CommentedMap()
        node, i = node[name], j


@app.command("set")
def set_value(
    key: Annotated[str, typer.Argument(help="a dotted path, e.g. routing.deadline")],
    value: Annotated[str, typer.Argument(help="a YAML value: 30, true, [a, b], ${VAR}, text")],
    config: ConfigOption = None,
) -> None:
    """Set one setting in the file (made if missing), keeping comments and ${VAR}s; refused if invalid."""
    path = config_path(config) or DEFAULT_CONFIG
    rt = _round_trip()
    try:
        tree = rt.load(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, YAMLError) as exc:
        raise CliError(f"cannot read config file {path}: {exc}", EXIT_USAGE) from None
    if tree is None:
        tree = CommentedMap()
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # not YAML: the text itself
    _assign(tree, key, parsed)
    out = io.StringIO()
    rt.dump(tree, out)
    text = out.getvalue()
    cfg, errors = _check(yaml.safe_load(text))
    if cfg is None:
        lines = "\n".join(f"  {where}: {msg}" for where, msg in errors)
        raise CliError(
            f"not written: {key} = {value!r} makes the configuration invalid:\n{lines}", EXIT_USAGE
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    typer.echo(f"{path}: {key} = {value}")


# -- init ------------------------------------------------------------------------------------------------

_HEADER = """\
# portway gateway configuration, written by `portway init` on {date}.
# Secrets stay in the environment: each ${{VAR}} is replaced from it when portway starts.
# Every setting with its default is in gateway.example.yaml; check this file with `portway config validate`,
# change it with `portway config set KEY VALUE`.
"""


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _provider_lines(name: str, spec: dict[str, Any], keys: str | None) -> list[str]:
    lines = [f"{name}:", f"  type: {spec['type']}"]
    if spec.get("base_url"):
        lines.append(f"  base_url: {spec['base_url']}")
    if keys is not None:
        lines.append(f'  api_keys: ["${{{keys}}}"]')
    return lines


def render_init(env: dict[str, str] | os._Environ[str]) -> str:
    """A commented gateway.yaml: each provider whose key variable is set, the others commented out."""
    lines = [_HEADER.format(date=datetime.now(UTC).date().isoformat()), "providers:"]
    for var, name, spec, _tiers in _DEFAULT_PROVIDERS:
        count = len([k for k in (env.get(var) or "").split(",") if k.strip()])
        body = _provider_lines(name, spec, var)
        if count:
            lines.append(f"  # {var} is set: {name} is enabled")
            if count > 1:
                lines.append(
                    f"  # {var} holds {count} keys: in a file, give each its own variable in the list"
                )
            lines += [f"  {line}" for line in body]
        else:
            lines.append(f"  # {var} is not set: export it and uncomment these lines to add {name}")
            lines += [f"  # {line}" for line in body]
    lines += ["  # the embedded local model (SmolLM2): answers with no key and no network", "  local:"]
    lines += [
        "    type: local",
        "",
        "models:",
        "  # aliases: fallback chains, tried in order (provider/model)",
    ]
    for alias, targets in default_config(env).models.items():
        lines.append(f"  {alias}: {_flow(targets)}")
    return "\n".join(lines) + "\n"


def init(
    config: Annotated[Path, typer.Option("--config", help="where to write it")] = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented gateway.yaml from the environment (GROQ_API_KEY set: a groq provider, ...)."""
    if config.exists() and not force:
        raise CliError(f"{config} exists: keep it, or overwrite it with --force", EXIT_USAGE)
    text = render_init(os.environ)
    cfg, errors = _check(yaml.safe_load(text))
    if cfg is None:  # a bug in render_init, never the user's doing
        raise RuntimeError(f"portway init rendered an invalid configuration: {errors}")
    config.write_text(text, encoding="utf-8")
    enabled = ", ".join(n for n in cfg.providers if cfg.providers[n].enabled)
    console().print(f"wrote {config}: providers {enabled}; aliases {', '.join(cfg.models)}")
    console().print("next: `portway config validate`, then `portway serve`")
