"""The per-request state telemetry keeps in contextvars (no imports: the HTTP client reads it)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

# Headers the current upstream attempt passes on (its traceparent): the HTTP client adds them.
UPSTREAM_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("portway_upstream_headers", default=None)
