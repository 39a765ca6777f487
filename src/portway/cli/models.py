"""`portway models`: the server's model list (`GET /v1/models`, filtered by the server) as a table."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from portway.cli.client import Server
from portway.cli.common import DEFAULT_URL, JsonOption, KeyOption, UrlOption, cell, console, print_json, table


def _modalities(model: dict[str, Any]) -> str:
    inputs, outputs = model.get("modalities_in"), model.get("modalities_out")
    if inputs or outputs:
        return f"{'+'.join(inputs or [])}->{'+'.join(outputs or [])}"
    arch = model.get("architecture")
    return cell(arch.get("modality")) if isinstance(arch, dict) else cell(model.get("modality"))


def _price(model: dict[str, Any]) -> str:
    """Input/output USD per 1M tokens, from whichever fields the catalog gives."""
    pricing = model.get("pricing")
    if not isinstance(pricing, dict):
        pricing = model
    given = [pricing.get(k) for k in ("input", "output")]
    if all(v is None for v in given):
        given = [pricing.get(k) for k in ("input_per_1m", "output_per_1m")]
    if all(v is None for v in given):
        return ""
    return " / ".join("" if v is None else f"${float(v):.4g}" for v in given)


def models(
    provider: Annotated[str | None, typer.Option(help="only this provider's models")] = None,
    free: Annotated[bool, typer.Option("--free", help="only free models")] = False,
    modality: Annotated[
        str | None, typer.Option(help="only models with this modality (text, image...)")
    ] = None,
    json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """List the models and aliases the server offers."""
    with Server.connect(url, key) as server:
        answer = server.get("/v1/models", provider=provider, free="true" if free else None, modality=modality)
    data: list[dict[str, Any]] = answer.get("data") or []
    if json:
        print_json(answer)
        return
    rows = [
        [
            cell(m.get("id")),
            cell(m.get("provider") or m.get("owned_by")),
            _modalities(m),
            cell(m.get("context_length")),
            cell(m.get("free")),
            _price(m),
        ]
        for m in data
    ]
    columns = ["model", "provider", "modality", "context", "free", "$/1M in / out"]
    # Columns the server did not fill in (an older server: ids only) are left out.
    keep = [i for i in range(len(columns)) if i < 2 or any(r[i] for r in rows)]
    shown = [[r[i] for i in keep] for r in rows]
    console().print(table(f"{len(data)} models", [columns[i] for i in keep], shown, right=("context",)))
