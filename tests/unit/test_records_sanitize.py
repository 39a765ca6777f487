"""Records are made storable at the record boundary: NUL removed, text cut to its column, numbers in range."""

from __future__ import annotations

import math

from portway.stores.sql.tables import request_log
from portway.usage.records import INT_MAX, INT_MIN, UsageRecord, sanitize


def good() -> UsageRecord:
    return UsageRecord(1.5, "r1", "key:abc", "fast", "groq", "llama", 200, 12.5, 3, 4, True, 1, None, 0.01)


def test_a_usual_record_is_left_as_it_is() -> None:
    r = good()
    before = repr(r)
    assert sanitize([r, good()]) == 0
    assert repr(r) == before


def test_text_loses_nul_bytes_and_is_cut_to_its_column() -> None:
    r = UsageRecord(
        1.0,
        "i\x00d" * 40,
        "p" * 200,
        "m\x00" + "x" * 300,
        "v" * 99,
        "s\x00" * 300,
        404,
        1.0,
        error_code="e" * 80,
    )
    assert sanitize([good(), r]) == 1
    for column in request_log.c:
        limit = getattr(column.type, "length", None)
        if limit:
            value = getattr(r, column.name)
            assert "\x00" not in value and len(value) <= limit, column.name
    assert r.requested_model == "m" + "x" * 255
    assert r.request_id.startswith("idid")
    assert r.served_model == "s" * 256


def test_lone_surrogates_and_non_strings_become_storable_text() -> None:
    r = UsageRecord(1.0, "r", "master", "caf\u00e9 \ud800", None, 42, 200, 1.0)  # type: ignore[arg-type]
    assert sanitize([r]) == 1
    assert r.requested_model == "caf\u00e9 ?" and r.served_model == "42" and r.provider is None
    r.requested_model.encode("utf-8")  # encodable now


def test_numbers_are_finite_and_within_the_columns() -> None:
    stream: bool = 1  # type: ignore[assignment]  # an int where a bool belongs
    r = UsageRecord(
        math.nan,
        "r",
        "master",
        "m",
        None,
        None,
        10**30,
        math.inf,
        2**70,
        -5,
        stream,
        -(10**40),
        None,
        -math.inf,
    )
    assert sanitize([r]) == 1
    assert (r.ts, r.latency_ms, r.cost_usd) == (0.0, 0.0, 0.0)
    assert r.status == INT_MAX and r.prompt_tokens == INT_MAX and r.completion_tokens == 0
    assert r.attempts == INT_MIN and r.stream is True
    f = UsageRecord(1.0, "r", "master", "m", None, None, 200.0, 1.0, 1e300, 3.9)  # type: ignore[arg-type]
    assert sanitize([f]) == 1
    assert (f.status, f.prompt_tokens, f.completion_tokens) == (200, INT_MAX, 3)
    assert all(type(v) is int for v in (f.status, f.prompt_tokens, f.completion_tokens))
