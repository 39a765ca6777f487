"""Every refusal portway itself makes carries a code from README's table of error codes.

The documented set is parsed from README.md, so the docs and the code cannot drift apart: a new error class
or refusal needs its row. Regression: the local model's `n` and image-content refusals answered
`code: invalid_request_error` (a type, not a documented code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import portway.app  # noqa: F401  (imports every module, so every PortwayError subclass is defined)
from portway.api.validation import parse_json_object, validate_chat
from portway.errors import PortwayError, ValidationError
from portway.providers.base import UpstreamFailure
from portway.providers.local.params import build_request

README = Path(__file__).resolve().parents[2] / "README.md"
MSGS = [{"role": "user", "content": "hi"}]


def documented_codes() -> set[str]:
    """The codes in README's error table (rows `| status | code(s) | when |` after the `| status |` head)."""
    text = README.read_text()
    head = text.index("| status | code | when |")
    codes: set[str] = set()
    for line in text[head:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        codes |= set(re.findall(r"`([a-z_]+)`", cells[1]))
    return codes


def _subclasses(cls: type[PortwayError]) -> list[type[PortwayError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


def test_the_readme_table_parses() -> None:
    codes = documented_codes()
    assert {"validation_error", "rate_limit_exceeded", "upstream_timeout", "upstream_bad_request"} <= codes


def test_every_error_class_has_a_documented_code() -> None:
    documented = documented_codes()
    undocumented = {c.__name__: c.code for c in _subclasses(PortwayError) if c.code not in documented}
    assert not undocumented, f"add these codes to README's error table: {undocumented}"


BAD_CHAT_BODIES: list[tuple[dict[str, Any], str | None]] = [
    ({"messages": MSGS}, "model"),
    ({"model": "", "messages": MSGS}, "model"),
    ({"model": "m", "models": "x", "messages": MSGS}, "models"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": MSGS, "n": 0}, "n"),
    ({"model": "m", "messages": MSGS, "n": "2"}, "n"),
    ({"model": "m", "messages": MSGS, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": MSGS, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"model": "m", "messages": MSGS, "seed": True}, "seed"),
    ({"model": "m", "messages": MSGS, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": MSGS, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": MSGS, "response_format": "json"}, "response_format"),
    ({"model": "m", "messages": MSGS, "stop": [1]}, "stop"),
    ({"model": "m", "messages": MSGS, "tools": {}}, "tools"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT_BODIES)
def test_chat_validation_refusals_use_documented_codes(body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        validate_chat(body)
    assert info.value.code in documented_codes()
    assert info.value.param == param and info.value.status_code == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b'"text"'])
def test_unparseable_bodies_use_documented_codes(raw: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        parse_json_object(raw)
    assert info.value.code in documented_codes()


LOCAL_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"messages": MSGS, "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
    ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSGS, "temperature": "hot"}, "temperature"),
    ({"messages": MSGS, "seed": 1.5}, "seed"),
    ({"messages": MSGS, "stop": [1]}, "stop"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), LOCAL_REFUSALS)
def test_local_model_refusals_use_documented_codes(body: dict[str, Any], param: str) -> None:
    """What the local model cannot do is refused by portway itself: a documented code, naming the field."""
    with pytest.raises(UpstreamFailure) as info:
        build_request(body, max_tokens_cap=256)
    assert info.value.error_code in documented_codes(), info.value.error_code
    assert info.value.param == param and info.value.status == 400
