"""What every conformance runner shares: its JSON fixtures by kind, and upstream events onto the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from portway.providers.sse import encode_event


def fixtures(runner: str) -> list[Path]:
    """The fixture files beside a runner module (pass its `__file__`)."""
    return sorted((Path(runner).parent / "fixtures").glob("*.json"))


def cases(paths: list[Path], kind: str) -> list[Any]:
    """The fixtures of one kind (request, response, stream), each a pytest param named after its file."""
    out = []
    for path in paths:
        case = json.loads(path.read_text())
        if case["kind"] == kind:
            out.append(pytest.param(case, id=path.stem))
    return out


def wire(event: Any) -> bytes:
    """A fixture's upstream event as an SSE event: "[DONE]", {"raw": "..."} as written, or a JSON chunk."""
    if event == "[DONE]":
        return b"data: [DONE]\n\n"
    if isinstance(event, dict) and set(event) == {"raw"}:
        return str(event["raw"]).encode()
    return encode_event(event)
