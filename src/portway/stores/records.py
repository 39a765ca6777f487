"""What the gateway hands to storage after each request (never awaited on the hot path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class UsageRecord:
    ts: float  # unix seconds
    request_id: str
    principal: str  # "master", "key:<id>", "user:<id>" - never a secret
    requested_model: str
    provider: str | None
    served_model: str | None
    status: int
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False
    attempts: int = 0
    error_code: str | None = None
    cost_usd: float = 0.0
    usage_estimated: bool = False  # the upstream sent no usage: tokens estimated from what was delivered


class UsageSink(Protocol):
    async def write_usage(self, records: list[UsageRecord]) -> None: ...
