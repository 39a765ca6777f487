"""`portway keys|policies|users`: the admin API (`/admin/keys`, `/admin/key-policies`, `/admin/users`).

Bodies are built from options and checked by the server (identity/models.py): one set of rules, in one place.
A plaintext key appears once, in the answer that created it, and is printed so it stands out.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_type_hints

import orjson
import typer
from rich.panel import Panel

from portway.cli.client import Server
from portway.cli.common import (
    DEFAULT_URL,
    EXIT_USAGE,
    CliError,
    JsonOption,
    KeyOption,
    UrlOption,
    cell,
    console,
    print_json,
    table,
)

keys = typer.Typer(help="Virtual keys: create, list, show, update, revoke, rotate.", no_args_is_help=True)
policies = typer.Typer(help="Rotating key policies: create, list, current, rotate.", no_args_is_help=True)
users = typer.Typer(help="Users: create, list, update, set-admin.", no_args_is_help=True)


@dataclass(frozen=True, slots=True)
class LimitOptions:
    """The five limit fields of config.LimitFields as given on the command line (None: not given)."""

    rpm: Annotated[int | None, typer.Option(help="requests per minute", show_default=False)] = None
    tpm: Annotated[int | None, typer.Option(help="tokens per minute", show_default=False)] = None
    daily_requests: Annotated[
        int | None, typer.Option("--daily-requests", help="requests per UTC day", show_default=False)
    ] = None
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="spend per budget period", show_default=False)
    ] = None
    budget_period: Annotated[
        str | None, typer.Option("--budget-period", help="daily, monthly or total", show_default=False)
    ] = None

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NO_LIMITS = LimitOptions()
# LimitOptions' fields as parameters, for Typer to read as options.
_LIMIT_PARAMS = [
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=hint)
    for name, hint in get_type_hints(LimitOptions, include_extras=True).items()
]


def with_limits(command: Callable[..., None]) -> Callable[..., None]:
    """A command that sets limits takes one `limits: LimitOptions`; Typer reads options from the signature,
    so the one it is shown has the five limit options where `limits` stands, gathered again on the call."""
    signature = inspect.signature(command, eval_str=True)
    params = [
        q for p in signature.parameters.values() for q in (_LIMIT_PARAMS if p.name == "limits" else [p])
    ]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        given = {p.name: kwargs.pop(p.name) for p in _LIMIT_PARAMS}
        command(*args, limits=LimitOptions(**given), **kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return run


Models = Annotated[
    list[str] | None, typer.Option("--model", help="an allowed model pattern (repeat it)", show_default=False)
]
Cache = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache", help="the response cache for every model it asks for", show_default=False
    ),
]
Limit = Annotated[int, typer.Option(help="page size")]
Offset = Annotated[int, typer.Option(help="items to skip")]


def _body(**fields: Any) -> dict[str, Any]:
    """The options that were given (None: not given, so the server keeps or defaults it)."""
    return {k: v for k, v in fields.items() if v is not None}


def _changes(**fields: Any) -> dict[str, Any]:
    """An update's body: at least one option must have been given."""
    body = _body(**fields)
    if not body:
        raise CliError("nothing to change: give at least one option (see --help)", EXIT_USAGE)
    return body


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise CliError(f"--metadata must be a JSON object (got {text!r})", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CliError("--metadata must be a JSON object", EXIT_USAGE)
    return value


def _limits(row: dict[str, Any]) -> str:
    parts = [f"{k}={cell(row.get(k))}" for k in ("rpm", "tpm", "daily_requests") if row.get(k) is not None]
    if row.get("budget_usd") is not None:
        parts.append(f"budget=${row['budget_usd']:g}/{row.get('budget_period') or 'total'}")
    return " ".join(parts)


def _details(answer: dict[str, Any], json: bool, title: str) -> None:
    """One object: JSON, or a two-column table of its fields."""
    if json:
        print_json(answer)
        return
    rows = [[k, cell(v)] for k, v in answer.items() if k not in ("object", "key", "api_key")]
    console().print(table(title, ["field", "value"], rows))


def _new_key(answer: dict[str, Any], json: bool, field: str = "key") -> None:
    """A plaintext key, shown once: JSON for scripts, else a panel that says it will not be shown again."""
    if json:
        print_json(answer)
        return
    out = console()
    _details(answer, False, str(answer.get("name") or answer.get("policy") or answer.get("id") or "key"))
    out.print(
        Panel(
            f"[bold]{answer[field]}[/]",
            title="the new key: copy it now, it is not shown again",
            title_align="left",
            expand=False,
            border_style="green",
        )
    )


def _done(answer: dict[str, Any], json: bool, line: str) -> None:
    """An action's answer: JSON, or one line saying what was done."""
    if json:
        print_json(answer)
    else:
        console().print(line)


def _page(answer: dict[str, Any], json: bool, title: str, columns: list[str], rows: list[list[str]]) -> None:
    if json:
        print_json(answer)
        return
    shown = f"{title}: {len(rows)} of {answer.get('total', len(rows))}"
    console().print(table(shown, columns, rows))


# -- keys ------------------------------------------------------------------------------------------------


@keys.command("create")
@with_limits
def key_create(
    name: Annotated[str, typer.Option(help="a label")] = "",
    user: Annotated[str | None, typer.Option("--user", help="the owning user's id")] = None,
    model: Models = None,
    limits: LimitOptions = NO_LIMITS,
    expires_in: Annotated[
        float | None, typer.Option(help="seconds until it expires", show_default=False)
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="a JSON object kept with the key")] = None,
    cache: Cache = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Create a virtual key (the key itself is shown only here)."""
    body = _body(
        name=name,
        user_id=user,
        allowed_models=model,
        **limits.fields(),
        expires_in_seconds=expires_in,
        metadata=_metadata(metadata),
        cache=cache,
    )
    with Server.connect(url, key) as server:
        _new_key(server.post("/admin/keys", body), json)


@keys.command("list")
def key_list(
    user: Annotated[str | None, typer.Option("--user", help="only this user's keys")] = None,
    name: Annotated[str | None, typer.Option(help="only keys with this name")] = None,
    revoked: Annotated[
        bool | None, typer.Option("--revoked/--active", help="only revoked / active keys")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List virtual keys (never the keys themselves)."""
    with Server.connect(url, key) as server:
        answer = server.get(
            "/admin/keys", user_id=user, name=name, revoked=revoked, limit=limit, offset=offset
        )
    rows = [
        [
            cell(k.get("id")),
            cell(k.get("name")),
            cell(k.get("display_prefix")),
            cell(k.get("status")),
            cell(k.get("user_id")),
            _limits(k),
            cell(k.get("allowed_models")),
            cell(k.get("cache")),
            cell(k.get("last_used_at")),
        ]
        for k in answer.get("data") or []
    ]
    columns = ["id", "name", "prefix", "status", "user", "limits", "models", "cache", "last used"]
    _page(answer, json, "keys", columns, rows)


@keys.command("show")
def key_show(
    key_id: Annotated[str, typer.Argument(help="the key's id (key_...)")],
    usage: Annotated[bool, typer.Option("--usage", help="also its usage against its limits")] = False,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """One virtual key; --usage adds what it has used of its limits."""
    with Server.connect(url, key) as server:
        answer = server.get(f"/admin/keys/{key_id}")
        if usage:
            answer = {**answer, "usage": server.get(f"/admin/keys/{key_id}/usage")}
    _details(answer, json, f"key {key_id}")


@keys.command("update")
@with_limits
def key_update(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    name: Annotated[str | None, typer.Option(help="a new label")] = None,
    model: Models = None,
    limits: LimitOptions = NO_LIMITS,
    expires_in: Annotated[float | None, typer.Option(help="seconds from now until it expires")] = None,
    metadata: Annotated[str | None, typer.Option(help="a JSON object (replaces the old one)")] = None,
    cache: Cache = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Change a key's name, allowed models, limits, expiry, metadata or response cache (options not given
    are kept)."""
    body = _changes(
        name=name,
        allowed_models=model,
        **limits.fields(),
        expires_in_seconds=expires_in,
        metadata=_metadata(metadata),
        cache=cache,
    )
    with Server.connect(url, key) as server:
        _details(server.patch(f"/admin/keys/{key_id}", body), json, f"key {key_id}")


@keys.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Revoke a key: it is refused from now on."""
    with Server.connect(url, key) as server:
        answer = server.post(f"/admin/keys/{key_id}/revoke")
    _done(answer, json, f"revoked {cell(answer.get('id'))} ({cell(answer.get('status'))})")


@keys.command("rotate")
def key_rotate(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Revoke a key and issue a replacement with the same settings (shown only here)."""
    with Server.connect(url, key) as server:
        _new_key(server.post(f"/admin/keys/{key_id}/rotate"), json)


# -- rotating key policies -------------------------------------------------------------------------------


@policies.command("create")
@with_limits
def policy_create(
    name: Annotated[str, typer.Argument(help="the policy's name")],
    period_days: Annotated[float | None, typer.Option(help="days between rotations (default 7)")] = None,
    period_seconds: Annotated[float | None, typer.Option(help="seconds between rotations")] = None,
    grace_seconds: Annotated[float | None, typer.Option(help="how long the previous key still works")] = None,
    model: Models = None,
    limits: LimitOptions = NO_LIMITS,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Create a rotating key policy; its first key is shown."""
    body = _body(
        name=name,
        period_days=period_days,
        period_seconds=period_seconds,
        grace_seconds=grace_seconds,
        allowed_models=model,
        **limits.fields(),
    )
    with Server.connect(url, key) as server:
        _new_key(server.post("/admin/key-policies", body), json, field="api_key")


@policies.command("list")
def policy_list(
    limit: Limit = 50,
    offset: Offset = 0,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List rotating key policies."""
    with Server.connect(url, key) as server:
        answer = server.get("/admin/key-policies", limit=limit, offset=offset)
    rows = [
        [
            cell(p.get("name")),
            f"{float(p.get('period_seconds') or 0) / 86_400:g} d",
            cell(p.get("current_key_id")),
            cell(p.get("rotated_at")),
            cell(p.get("next_rotation_at")),
            _limits(p),
        ]
        for p in answer.get("data") or []
    ]
    _page(answer, json, "key policies", ["name", "period", "current key", "rotated", "next", "limits"], rows)


@policies.command("current")
def policy_current(
    name: Annotated[str, typer.Argument(help="the policy's name")],
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """The policy's current key (plaintext: for the service that uses it)."""
    with Server.connect(url, key) as server:
        answer = server.get("/admin/keys/current", policy=name)
    if json:
        print_json(answer)
    else:
        typer.echo(answer["api_key"])  # bare, so `$(portway policies current ci)` works


@policies.command("rotate")
def policy_rotate(
    name: Annotated[str, typer.Argument(help="the policy's name")],
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Rotate a policy's key now (after a leak, say); the new key is shown."""
    with Server.connect(url, key) as server:
        _new_key(server.post(f"/admin/key-policies/{name}/rotate"), json, field="api_key")


# -- users -----------------------------------------------------------------------------------------------


def _user_id(server: Server, user: str) -> str:
    """A user's id from an id or an email address (looked up)."""
    if "@" not in user:
        return user
    found = server.get("/admin/users", email=user, limit=1).get("data") or []
    if not found:
        raise CliError(f"no user with email {user!r}", EXIT_USAGE)
    return str(found[0]["id"])


Password = Annotated[
    str | None, typer.Option(help="a password (at least 8 characters) for logging in", show_default=False)
]


@users.command("create")
@with_limits
def user_create(
    email: Annotated[str, typer.Argument(help="the user's email address")],
    password: Password = None,
    admin: Annotated[bool, typer.Option("--admin", help="make the user an admin")] = False,
    disabled: Annotated[bool, typer.Option("--disabled", help="create the user disabled")] = False,
    limits: LimitOptions = NO_LIMITS,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Create a user."""
    body = _body(
        email=email,
        password=password,
        is_admin=admin,
        disabled=disabled,
        **limits.fields(),
    )
    with Server.connect(url, key) as server:
        _details(server.post("/admin/users", body), json, f"user {email}")


@users.command("list")
def user_list(
    email: Annotated[str | None, typer.Option(help="only this email address")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List users."""
    with Server.connect(url, key) as server:
        answer = server.get("/admin/users", email=email, limit=limit, offset=offset)
    rows = [
        [
            cell(u.get("id")),
            cell(u.get("email")),
            cell(u.get("is_admin")),
            cell(u.get("disabled")),
            _limits(u),
            cell(u.get("created_at")),
        ]
        for u in answer.get("data") or []
    ]
    _page(answer, json, "users", ["id", "email", "admin", "disabled", "limits", "created"], rows)


@users.command("update")
@with_limits
def user_update(
    user: Annotated[str, typer.Argument(help="the user's id or email address")],
    email: Annotated[str | None, typer.Option(help="a new email address")] = None,
    password: Password = None,
    disabled: Annotated[bool | None, typer.Option("--disabled/--enabled", help="disable or enable")] = None,
    limits: LimitOptions = NO_LIMITS,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Change a user's email, password, disabled flag or limits (options not given are kept)."""
    body = _changes(
        email=email,
        password=password,
        disabled=disabled,
        **limits.fields(),
    )
    with Server.connect(url, key) as server:
        user_id = _user_id(server, user)
        _details(server.patch(f"/admin/users/{user_id}", body), json, f"user {user_id}")


@users.command("set-admin")
def user_set_admin(
    user: Annotated[str, typer.Argument(help="the user's id or email address")],
    admin: Annotated[
        bool, typer.Option("--admin/--no-admin", help="grant (default) or take away admin")
    ] = True,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Make a user an admin (--no-admin: no longer one)."""
    with Server.connect(url, key) as server:
        user_id = _user_id(server, user)
        answer = server.patch(f"/admin/users/{user_id}", {"is_admin": admin})
    _done(answer, json, f"{cell(answer.get('email'))}: admin {cell(answer.get('is_admin'))}")
