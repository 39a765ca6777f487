"""`portway keys|policies|users`: the admin API (`/admin/keys`, `/admin/key-policies`, `/admin/users`).

Bodies are built from options and checked by the server (identity/models.py): one set of rules, in one place.
A plaintext key appears once, in the answer that created it, and is printed so it stands out.
"""

from __future__ import annotations

from typing import Annotated, Any

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

# The five limit fields of config.LimitFields, as options of every command that sets limits.
Rpm = Annotated[int | None, typer.Option(help="requests per minute", show_default=False)]
Tpm = Annotated[int | None, typer.Option(help="tokens per minute", show_default=False)]
Daily = Annotated[
    int | None, typer.Option("--daily-requests", help="requests per UTC day", show_default=False)
]
Budget = Annotated[
    float | None, typer.Option("--budget-usd", help="spend per budget period", show_default=False)
]
Period = Annotated[
    str | None, typer.Option("--budget-period", help="daily, monthly or total", show_default=False)
]
Models = Annotated[
    list[str] | None, typer.Option("--model", help="an allowed model pattern (repeat it)", show_default=False)
]
Limit = Annotated[int, typer.Option(help="page size")]
Offset = Annotated[int, typer.Option(help="items to skip")]


def _body(**fields: Any) -> dict[str, Any]:
    """The options that were given (None: not given, so the server keeps or defaults it)."""
    return {k: v for k, v in fields.items() if v is not None}


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


def _page(answer: dict[str, Any], json: bool, title: str, columns: list[str], rows: list[list[str]]) -> None:
    if json:
        print_json(answer)
        return
    shown = f"{title}: {len(rows)} of {answer.get('total', len(rows))}"
    console().print(table(shown, columns, rows))


# -- keys ------------------------------------------------------------------------------------------------


@keys.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="a label")] = "",
    user: Annotated[str | None, typer.Option("--user", help="the owning user's id")] = None,
    model: Models = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    daily_requests: Daily = None,
    budget_usd: Budget = None,
    budget_period: Period = None,
    expires_in: Annotated[
        float | None, typer.Option(help="seconds until it expires", show_default=False)
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="a JSON object kept with the key")] = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Create a virtual key (the key itself is shown only here)."""
    body = _body(
        name=name,
        user_id=user,
        allowed_models=model,
        rpm=rpm,
        tpm=tpm,
        daily_requests=daily_requests,
        budget_usd=budget_usd,
        budget_period=budget_period,
        expires_in_seconds=expires_in,
        metadata=_metadata(metadata),
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
            cell(k.get("last_used_at")),
        ]
        for k in answer.get("data") or []
    ]
    columns = ["id", "name", "prefix", "status", "user", "limits", "models", "last used"]
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
def key_update(
    key_id: Annotated[str, typer.Argument(help="the key's id")],
    name: Annotated[str | None, typer.Option(help="a new label")] = None,
    model: Models = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    daily_requests: Daily = None,
    budget_usd: Budget = None,
    budget_period: Period = None,
    expires_in: Annotated[float | None, typer.Option(help="seconds from now until it expires")] = None,
    metadata: Annotated[str | None, typer.Option(help="a JSON object (replaces the old one)")] = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Change a key's name, allowed models, limits, expiry or metadata (options not given are kept)."""
    body = _body(
        name=name,
        allowed_models=model,
        rpm=rpm,
        tpm=tpm,
        daily_requests=daily_requests,
        budget_usd=budget_usd,
        budget_period=budget_period,
        expires_in_seconds=expires_in,
        metadata=_metadata(metadata),
    )
    if not body:
        raise CliError("nothing to change: give at least one option (see --help)", EXIT_USAGE)
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
    if json:
        print_json(answer)
    else:
        console().print(f"revoked {cell(answer.get('id'))} ({cell(answer.get('status'))})")


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
def policy_create(
    name: Annotated[str, typer.Argument(help="the policy's name")],
    period_days: Annotated[float | None, typer.Option(help="days between rotations (default 7)")] = None,
    period_seconds: Annotated[float | None, typer.Option(help="seconds between rotations")] = None,
    grace_seconds: Annotated[float | None, typer.Option(help="how long the previous key still works")] = None,
    model: Models = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    daily_requests: Daily = None,
    budget_usd: Budget = None,
    budget_period: Period = None,
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
        rpm=rpm,
        tpm=tpm,
        daily_requests=daily_requests,
        budget_usd=budget_usd,
        budget_period=budget_period,
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
def user_create(
    email: Annotated[str, typer.Argument(help="the user's email address")],
    password: Password = None,
    admin: Annotated[bool, typer.Option("--admin", help="make the user an admin")] = False,
    disabled: Annotated[bool, typer.Option("--disabled", help="create the user disabled")] = False,
    rpm: Rpm = None,
    tpm: Tpm = None,
    daily_requests: Daily = None,
    budget_usd: Budget = None,
    budget_period: Period = None,
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
        rpm=rpm,
        tpm=tpm,
        daily_requests=daily_requests,
        budget_usd=budget_usd,
        budget_period=budget_period,
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
def user_update(
    user: Annotated[str, typer.Argument(help="the user's id or email address")],
    email: Annotated[str | None, typer.Option(help="a new email address")] = None,
    password: Password = None,
    disabled: Annotated[bool | None, typer.Option("--disabled/--enabled", help="disable or enable")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    daily_requests: Daily = None,
    budget_usd: Budget = None,
    budget_period: Period = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Change a user's email, password, disabled flag or limits (options not given are kept)."""
    body = _body(
        email=email,
        password=password,
        disabled=disabled,
        rpm=rpm,
        tpm=tpm,
        daily_requests=daily_requests,
        budget_usd=budget_usd,
        budget_period=budget_period,
    )
    if not body:
        raise CliError("nothing to change: give at least one option (see --help)", EXIT_USAGE)
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
    if json:
        print_json(answer)
    else:
        console().print(f"{cell(answer.get('email'))}: admin {cell(answer.get('is_admin'))}")
