"""The outside services some tests use, and what happens when one is not there.

PostgreSQL (PORTWAY_TEST_POSTGRES_URL) and Redis (PORTWAY_TEST_REDIS_URL) default to the local servers; a few
Redis tests also start private ``redis-server`` processes. A test that needs one calls :func:`require`, or
carries the ``postgres``, ``redis`` or ``redis_server`` marker. An unreachable service skips the test with a
one-line reason, so ``make test`` passes on a machine without them and the summary counts the skips. With
``PORTWAY_TEST_SERVICES=required`` (as CI runs) it fails the test instead: a run meant to cover them cannot
quietly skip them.
"""

from __future__ import annotations

import os
import shutil
import socket
from functools import cache
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("PORTWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PORTWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROBE_TIMEOUT = 1.0

SERVICES = ("postgres", "redis", "redis_server")


def required() -> bool:
    return os.environ.get("PORTWAY_TEST_SERVICES", "").strip().lower() == "required"


def address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _connect(url: str, default_port: int) -> socket.socket:
    host, port = address(url, default_port)
    return socket.create_connection((host, port), timeout=PROBE_TIMEOUT)


def _postgres() -> str | None:
    try:
        _connect(POSTGRES_URL, 5432).close()
    except OSError as exc:
        return f"no PostgreSQL at {_where(POSTGRES_URL, 5432)} ({exc.strerror or exc})"
    return None


def _redis() -> str | None:
    # A PING, not only a connect: something else listening on the port is not a Redis.
    try:
        with _connect(REDIS_URL, 6379) as s:
            s.sendall(b"PING\r\n")
            answer = s.recv(64)
    except OSError as exc:
        return f"no Redis at {_where(REDIS_URL, 6379)} ({exc.strerror or exc})"
    if not answer.startswith(b"+PONG"):
        return f"no Redis at {_where(REDIS_URL, 6379)} (PING answered {answer[:30]!r})"
    return None


def _redis_server() -> str | None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server and redis-cli are not on PATH (these tests start their own)"
    return None


def _where(url: str, default_port: int) -> str:
    host, port = address(url, default_port)
    return f"{host}:{port}"


@cache
def missing(service: str) -> str | None:
    """Why ``service`` cannot be used, or None when it can. Probed once per test process."""
    probes = {"postgres": _postgres, "redis": _redis, "redis_server": _redis_server}
    return probes[service]()


def require(service: str) -> None:
    """Skip the calling test when ``service`` is unreachable, or fail it when the run requires services."""
    reason = missing(service)
    if reason is None:
        return
    if required():
        pytest.fail(f"{reason}, and PORTWAY_TEST_SERVICES=required", pytrace=False)
    pytest.skip(reason)
