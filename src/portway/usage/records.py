"""What the gateway hands to storage after each request (never awaited on the hot path).

`sanitize` makes records storable before they reach a database: a client chooses the model name (and an
upstream its own), so a record may hold a NUL byte, a 300-character name or a number no column takes, and one
such row used to fail its whole batch. It runs in the usage writer at flush time, not per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# What a column of the request log holds (stores/sql/tables.py builds the table from these, so the
# record boundary and the schema cannot drift apart). Integers are 32-bit: Postgres INTEGER.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
TEXT_LENGTHS = {
    "request_id": 64,
    "principal": 128,
    "requested_model": 256,
    "provider": 64,
    "served_model": 256,
    "error_code": 64,
    "endpoint": 32,
}


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
    endpoint: str = "chat"  # the task: chat, embeddings, image_generation, speech, transcription, ...
    bytes_in: int = 0  # request body (uploads included)
    bytes_out: int = 0  # answer body as sent to the client (0 when not counted)
    images: int = 0  # media units (providers.media.MediaUnits), priced per unit
    characters: int = 0
    audio_seconds: float = 0.0
    video_seconds: float = 0.0
    ttft_ms: float = 0.0  # streams: arrival to the first event sent (0: not a stream, or none sent)
    cached_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens
    cache_hit: bool = False  # answered from portway's response cache (no upstream call)


class UsageSink(Protocol):
    async def write_usage(self, records: list[UsageRecord]) -> None: ...


_RID, _PRINCIPAL, _REQUESTED, _PROVIDER, _SERVED, _ERROR, _ENDPOINT = TEXT_LENGTHS.values()
_TEXT = (
    ("request_id", _RID, False),
    ("principal", _PRINCIPAL, False),
    ("requested_model", _REQUESTED, False),
    ("provider", _PROVIDER, True),
    ("served_model", _SERVED, True),
    ("error_code", _ERROR, True),
    ("endpoint", _ENDPOINT, False),
)
_INTS = (
    "status",
    "prompt_tokens",
    "completion_tokens",
    "attempts",
    "bytes_in",
    "bytes_out",
    "images",
    "characters",
    "cached_tokens",
    "reasoning_tokens",
)
_COUNTS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "bytes_in",
        "bytes_out",
        "images",
        "characters",
        "cached_tokens",
        "reasoning_tokens",
    }
)
_FLOATS = ("ts", "latency_ms", "cost_usd", "audio_seconds", "video_seconds", "ttft_ms")
_BOOLS = ("stream", "usage_estimated", "cache_hit")


def _storable(r: UsageRecord) -> bool:
    """The fast check: True for the usual record (short ASCII text, numbers in range), with no copying."""
    p, s, e = r.provider, r.served_model, r.error_code
    text = f"{r.request_id}{r.principal}{r.requested_model}{p or ''}{s or ''}{e or ''}{r.endpoint}"
    return (
        text.isascii()  # non-ASCII text is fine, but is checked for lone surrogates in the slow path
        and "\x00" not in text
        and len(r.request_id) <= _RID
        and len(r.principal) <= _PRINCIPAL
        and len(r.requested_model) <= _REQUESTED
        and (p is None or len(p) <= _PROVIDER)
        and (s is None or len(s) <= _SERVED)
        and (e is None or len(e) <= _ERROR)
        and len(r.endpoint) <= _ENDPOINT
        and type(r.status) is int
        and INT_MIN <= r.status <= INT_MAX
        and type(r.prompt_tokens) is int
        and 0 <= r.prompt_tokens <= INT_MAX
        and type(r.completion_tokens) is int
        and 0 <= r.completion_tokens <= INT_MAX
        and type(r.attempts) is int
        and INT_MIN <= r.attempts <= INT_MAX
        and r.ts - r.ts == 0.0  # false for NaN and +-inf (and raises for a non-number)
        and r.latency_ms - r.latency_ms == 0.0
        and r.cost_usd - r.cost_usd == 0.0
        and type(r.stream) is bool
        and type(r.usage_estimated) is bool
        and _counts_ok(r)
    )


def _counts_ok(r: UsageRecord) -> bool:
    """The media counts, apart so the common chat record (all zero) is checked in one comparison each."""
    return (
        type(r.bytes_in) is int
        and 0 <= r.bytes_in <= INT_MAX
        and type(r.bytes_out) is int
        and 0 <= r.bytes_out <= INT_MAX
        and type(r.images) is int
        and 0 <= r.images <= INT_MAX
        and type(r.characters) is int
        and 0 <= r.characters <= INT_MAX
        and r.audio_seconds - r.audio_seconds == 0.0
        and r.video_seconds - r.video_seconds == 0.0
        and r.ttft_ms - r.ttft_ms == 0.0
        and type(r.cached_tokens) is int
        and 0 <= r.cached_tokens <= INT_MAX
        and type(r.reasoning_tokens) is int
        and 0 <= r.reasoning_tokens <= INT_MAX
        and type(r.cache_hit) is bool
    )


def _text(value: Any, limit: int, nullable: bool) -> str | None:
    if value is None:
        return None if nullable else ""
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():  # a lone surrogate cannot be encoded for the database: it becomes "?"
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _int(value: Any, low: int) -> int:
    if isinstance(value, float):
        value = int(value) if value - value == 0.0 else 0
    elif not isinstance(value, int):
        return 0
    return min(max(int(value), low), INT_MAX)


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if number - number == 0.0 else 0.0


def _fix(r: UsageRecord) -> None:
    for name, limit, nullable in _TEXT:
        setattr(r, name, _text(getattr(r, name), limit, nullable))
    for name in _INTS:
        setattr(r, name, _int(getattr(r, name), 0 if name in _COUNTS else INT_MIN))
    for name in _FLOATS:
        setattr(r, name, _float(getattr(r, name)))
    for name in _BOOLS:
        setattr(r, name, bool(getattr(r, name)))


def sanitize(records: list[UsageRecord]) -> int:
    """Make every record storable in place (NUL removed, text cut to its column, numbers finite and in
    range); returns how many had to change. Only those records are touched."""
    fixed = 0
    for r in records:
        try:
            if _storable(r):
                continue
        except TypeError:  # e.g. a number where text belongs: the slow path converts it
            pass
        _fix(r)
        fixed += 1
    return fixed
