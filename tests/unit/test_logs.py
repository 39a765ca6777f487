"""Request ids on every log line, the JSON format with redaction, the access line, and the metrics' cost."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from portway.api.access import RequestTelemetry
from portway.telemetry.logs import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    log_config,
    new_request_id,
    redact,
)
from portway.telemetry.metrics import RequestMetrics
from portway.usage.records import UsageRecord


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer sk-live-0123456789abcdef",
        "headers={'authorization': 'Bearer abcdefghijklmnop'}",
        "x-api-key: abcdefghijklmnop123",
        "upstream echoed sk-ant-api03-abcdefghijklmnop in its error",
        "key=sk-pw-AbCdEf0123456789",
    ],
)
def test_redact_hides_secrets(line: str) -> None:
    out = redact(line)
    assert "***" in out
    for secret in ("0123456789abcdef", "abcdefghijklmnop", "AbCdEf0123456789"):
        assert secret not in out


def test_redact_leaves_ordinary_text() -> None:
    line = "upstream attempt failed: provider=groq model=llama key=groq#2 status=500"
    assert redact(line) is line


def test_new_request_id() -> None:
    assert new_request_id(b"client-id-123") == "client-id-123"
    assert new_request_id(b"x" * 100) == "x" * 64
    generated = new_request_id(None)
    assert len(generated) == 16 and int(generated, 16) >= 0
    # Control characters or spaces would let a client forge log lines: replaced by a fresh id.
    for bad in (b"a\x1bb", b"two words", "é".encode()):
        assert new_request_id(bad) != bad.decode("latin-1")


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    text = logging.Formatter("[%(request_id)s] %(message)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    logger = logging.getLogger(f"portway.test.{fmt}")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_every_line_carries_the_request_id() -> None:
    logger, stream = _capture("text")
    logger.info("outside")
    token = REQUEST_ID.set("req-42")
    try:
        logger.info("inside")
    finally:
        REQUEST_ID.reset(token)
    assert stream.getvalue().splitlines() == ["[-] outside", "[req-42] inside"]


def test_json_lines_redacted_with_extra_fields() -> None:
    logger, stream = _capture("json")
    token = REQUEST_ID.set("req-7")
    try:
        logger.warning("calling with Authorization: Bearer sk-secret-value-123", extra={"path": "/v1/x"})
        try:
            raise ValueError("boom sk-another-secret-1")
        except ValueError:
            logger.exception("failed")
    finally:
        REQUEST_ID.reset(token)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{"))
    assert first["level"] == "warning" and first["request_id"] == "req-7" and first["path"] == "/v1/x"
    assert "sk-secret" not in first["message"] and first["ts"].endswith("Z")
    assert "sk-another" not in second["exception"] and "ValueError" in second["exception"]


def test_log_config_json_covers_uvicorn_and_levels() -> None:
    cfg = log_config("debug", "json")
    assert all(f["()"].endswith("JsonFormatter") for f in cfg["formatters"].values())
    assert all(h["filters"] == ["request_id"] for h in cfg["handlers"].values())
    assert cfg["loggers"]["portway"]["level"] == logging.DEBUG
    assert log_config("error")["root"]["level"] == logging.ERROR
    assert log_config("trace")["loggers"]["portway"]["level"] == 5


@pytest.fixture
def access_lines() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("portway.access")
    handler = Keep()
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)


async def _call(app: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/admin/keys", "headers": headers}
    await app(scope, receive, send)
    return sent


async def test_request_telemetry_sets_id_and_logs_one_access_line(
    access_lines: list[logging.LogRecord],
) -> None:
    seen: list[str | None] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(REQUEST_ID.get())
        logging.getLogger("portway.access").debug("not an access line")
        headers = [(b"x-portway-provider", b"groq"), (b"x-portway-model", b"llama")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    app = RequestTelemetry(inner, access=True)
    sent = await _call(app, [(b"x-request-id", b"abc-123")])
    assert seen == ["abc-123"] and REQUEST_ID.get() is None
    assert (b"x-request-id", b"abc-123") in sent[0]["headers"]
    (line,) = access_lines
    assert (line.method, line.path, line.status, line.provider, line.model) == (  # type: ignore[attr-defined]
        "GET", "/admin/keys", 201, "groq", "llama",
    )  # fmt: skip
    assert line.request_id == "abc-123" and line.latency_ms >= 0  # type: ignore[attr-defined]

    fresh = await _call(RequestTelemetry(inner), [])  # no access line unless asked; an id generated
    ids = [v for k, v in fresh[0]["headers"] if k == b"x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 16 and len(access_lines) == 1


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        ts=0.0, request_id="r", principal="master", requested_model="fast" if i % 2 else "groq/x",
        provider="groq", served_model="x", status=200, latency_ms=12.5, prompt_tokens=20,
        completion_tokens=30, cost_usd=0.0001, ttft_ms=3.0 if i % 2 else 0.0,
    )  # fmt: skip


def test_request_metrics_cost_per_request() -> None:
    """The per-request update (Runtime._record) must stay cheap: a few microseconds."""
    metrics = RequestMetrics(["fast"])
    records = [_record(i) for i in range(1000)]
    for r in records[:10]:
        metrics.observe(r)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for r in records:
            metrics.observe(r)
        best = min(best, (time.perf_counter() - start) / len(records))
    print(f"RequestMetrics.observe: {best * 1e6:.2f} µs per request")
    assert best < 25e-6  # measured ~2-3 µs on the project's machine; a loose bound against regressions
    assert set(metrics._series) == {("chat", "groq", "fast"), ("chat", "groq", "other")}
