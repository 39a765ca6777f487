"""Request ids on every log line, and the one logging setup (text or `PORTWAY_LOG_FORMAT=json`).

The request id lives in a contextvar set once when a request arrives (api/access.py); a logging Filter on the
handler copies it onto every record, so any logger anywhere (portway's, a library's) logs it without being
passed it. The JSON formatter writes one object per line and redacts what looks like a secret: bearer
tokens, x-api-key values and `sk-…` keys, in the message and in every extra field.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from contextvars import ContextVar
from random import getrandbits
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("portway_request_id", default=None)
_MAX_ID = 64

# `Authorization: Bearer x`, `x-api-key: x` (header or key=value style), and any sk-… key (OpenAI's, portway's
# own sk-pw-…, Anthropic's sk-ant-…): secret enough to hide wherever they appear.
_SECRETS = re.compile(
    r"(?i)(?P<pre>\b(?:authorization|proxy-authorization)\b[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)[^\s\"',;]+"
    r"|(?P<pre2>\bx-api-key\b[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"
    r"|(?P<pre3>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{6,}"
)
_REDACTED = "***"
# Attributes every LogRecord has: anything else on a record came in as `extra=` and is logged as a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def new_request_id(raw: bytes | None) -> str:
    """The client's x-request-id when it is a short printable ASCII token, else a fresh one. Not a secret,
    so no getrandom syscall per request; an id with control characters or spaces would let a client forge
    log lines, so it is replaced."""
    if raw:
        rid = raw[:_MAX_ID].decode("latin-1")
        if rid.isascii() and rid.isprintable() and " " not in rid:
            return rid
    return f"{getrandbits(64):016x}"


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def redact(text: str) -> str:
    """`text` with bearer tokens, x-api-key values and sk-… keys replaced by ***."""
    if "sk-" not in text and not _maybe_secret(text):
        return text  # the usual line: two substring checks, no regex
    return _SECRETS.sub(_replace, text)


def _maybe_secret(text: str) -> bool:
    low = text.lower()
    return "authorization" in low or "api-key" in low or "bearer" in low


def _replace(match: re.Match[str]) -> str:
    pre = match.group("pre") or match.group("pre2") or match.group("pre3") or ""
    return pre + _REDACTED


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record as `request_id` ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extra fields; secrets redacted."""

    converter = time.gmtime  # type: ignore[assignment]  # timestamps in UTC, as the trailing Z says

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get() or "-",
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in out and not name.startswith("_"):
                out[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """The text format, with the same redaction as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# uvicorn's own logging config (uvicorn.config.LOGGING_CONFIG), spelled out: below api/ nothing imports
# uvicorn, and its formatters are named by string only, imported by dictConfig in the server's processes.
_UVICORN: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s"},
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
        },
    },
    "handlers": {
        "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}
LOG_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}


def log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """uvicorn's logging, plus portway's loggers at `level` and everything else at WARNING or above; every
    line carries the request id; `fmt` "json" makes every handler (uvicorn's too) write JSON lines.

    Handed to uvicorn too, so each worker process (which starts with no logging set up) logs the same way.
    """
    number = LOG_LEVELS[level]
    cfg: dict[str, Any] = copy.deepcopy(_UVICORN)
    cfg["filters"] = {"request_id": {"()": "portway.telemetry.logs.RequestIdFilter"}}
    cfg["formatters"]["portway"] = {
        "()": "portway.telemetry.logs.RedactingFormatter",
        # The id goes last, so a line reads as before to anything that parses "LEVEL logger: message".
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s [request_id=%(request_id)s]",
    }
    if fmt == "json":
        for name in list(cfg["formatters"]):
            cfg["formatters"][name] = {"()": "portway.telemetry.logs.JsonFormatter"}
    cfg["handlers"]["portway"] = {
        "class": "logging.StreamHandler",
        "formatter": "portway",
        "stream": "ext://sys.stderr",
    }
    for handler in cfg["handlers"].values():
        handler["filters"] = ["request_id"]
    cfg["loggers"]["portway"] = {"handlers": ["portway"], "level": number, "propagate": False}
    # Libraries' INFO (Alembic's migration steps among them) is noise in a server's log.
    cfg["root"] = {"handlers": ["portway"], "level": max(number, logging.WARNING)}
    return cfg
