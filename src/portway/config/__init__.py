"""gateway.yaml: schema, `${ENV}` interpolation, validation with clear messages, and the keyless default.

Without a config file portway still answers: the embedded `local` provider is always on, and one provider is
enabled for each of GROQ_API_KEY, OPENROUTER_API_KEY, OPENAI_API_KEY and HF_TOKEN that is set, behind the
aliases `fast`, `balanced` and `smart` (seed 003's tiers), each ending in `local/smollm2`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from portway.config.base import MAX_COUNT
from portway.config.base import Strict as _Strict
from portway.config.compat import CHEPPU_FALLBACKS as CHEPPU_FALLBACKS
from portway.config.compat import CompatConfig
from portway.errors import ConfigError
from portway.providers.registry import provider_class

log = logging.getLogger("portway.config")

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: what a header name may be
# Framing and routing headers portway writes itself: a configured copy would smuggle a second request.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})


class ProviderConfig(_Strict):
    type: str = Field(description="a provider type of providers/registry.py: openai, huggingface, local")
    base_url: str | None = None
    api_keys: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    stream_usage: bool = True
    models: list[str] = Field(default_factory=list, description="extra model ids listed in /v1/models")
    options: dict[str, Any] = Field(default_factory=dict, description="checked by the type's Options model")
    verify: bool = Field(True, description="verify the upstream's TLS certificate and host name")
    ca_file: Path | None = Field(None, description="PEM bundle of CAs to trust for this upstream")

    @field_validator("type")
    @classmethod
    def _known_type(cls, type_name: str) -> str:
        provider_class(type_name)  # ValueError naming the known types
        return type_name

    @field_validator("options")
    @classmethod
    def _check_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        type_name = info.data.get("type")
        if type_name is None:  # the type itself is invalid: that error is the one to report
            return options
        # Errors nest under providers.<name>.options.<field>; coerced values (e.g. "2048" from ${VAR}) stay.
        return provider_class(type_name).Options.model_validate(options).model_dump(exclude_unset=True)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _TOKEN_RE.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by portway itself and cannot be configured")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r}: the value must be latin-1 text") from None
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: the value must not contain line breaks or NUL")
        return headers

    @field_validator("api_keys")
    @classmethod
    def _drop_empty(cls, keys: list[str]) -> list[str]:
        # "${GROQ_API_KEY}" with the variable unset interpolates to "": that is "no key", not a key.
        keys = [k.strip() for k in keys if k and k.strip()]
        for i, key in enumerate(keys):
            if not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError(f"api_keys[{i}]: a key must be printable ASCII without spaces")
        return keys

    @model_validator(mode="after")
    def _base_url(self) -> ProviderConfig:
        declared = provider_class(self.type)
        if self.base_url is None:
            self.base_url = declared.default_base_url
        if declared.uses_base_url and not self.base_url:
            raise ValueError(f"base_url is required for type: {self.type}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https:// (got {self.base_url!r})")
        if self.base_url:
            self.base_url = self.base_url.rstrip("/")
        return self

    @property
    def enabled(self) -> bool:
        return not provider_class(self.type).needs_key or bool(self.api_keys)


class RoutingConfig(_Strict):
    deadline: float = Field(60.0, gt=0, description="one deadline per request across all attempts (s)")
    first_byte_timeout: float = Field(30.0, gt=0, description="stream: longest wait for the first event (s)")
    stream_idle_timeout: float = Field(60.0, gt=0, description="stream: longest gap between events (s)")
    max_attempts: int = Field(3, ge=1, description="upstream calls per request, all targets together")
    retries_per_target: int = Field(1, ge=0, description="extra tries of one target on 5xx/timeout")
    backoff_base: float = Field(0.1, ge=0)
    backoff_max: float = Field(2.0, ge=0)
    breaker_threshold: int = Field(5, ge=1, description="consecutive failures that open a breaker")
    breaker_cooldown: float = Field(30.0, gt=0, description="seconds before a half-open probe")
    rate_limit_cooldown: float = Field(10.0, ge=0, description="key cool-down after 429 w/o Retry-After")
    max_cooldown: float = Field(300.0, ge=0, description="cap on an upstream's Retry-After")
    attempt_timeout: float = Field(
        30.0, gt=0, description="longest one upstream attempt may take, so fallbacks keep their share (s)"
    )
    min_attempt_time: float = Field(
        0.5, gt=0, description="no attempt starts with less of the deadline left than this (s)"
    )
    key_recheck_after: float = Field(
        300.0, gt=0, description="a key the upstream rejected (401) is tried again after this (s)"
    )


class ServerConfig(_Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="request body cap, every route")
    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="multipart upload cap (image edits, audio)"
    )
    max_in_flight: int = Field(1024, ge=1, description="admitted requests per worker; beyond: fast 503")
    max_connections: int = Field(
        2048, ge=1, description="open client connections per worker; beyond: fast 503 and close"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description="request head cap")
    max_header_count: int = Field(100, ge=8, le=10_000, description="request header lines cap")
    read_timeout: float = Field(
        10.0, gt=0, description="close a connection whose request head or body stalls this long (s)"
    )
    keepalive_timeout: float = Field(5.0, gt=0, description="close an idle keep-alive connection after (s)")
    ready_write_failure_seconds: float = Field(
        30.0, gt=0, description="/ready answers 503 once usage writes have failed this long (s)"
    )
    cors_origins: list[str] = Field(default_factory=list)
    request_log: bool = True
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDRs of load balancers whose X-Forwarded-For names the client",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, proxies: list[str]) -> list[str]:
        for i, proxy in enumerate(proxies):
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies[{i}]: {proxy!r} is not an IP address or CIDR") from None
        return [p.strip() for p in proxies]


class TransportConfig(_Strict):
    max_connections: int = Field(
        1024, ge=1, description="open connections per upstream origin, per worker (excess waits)"
    )
    pool_timeout: float = Field(
        10.0, gt=0, description="longest wait for a free connection when an origin is at its cap (s)"
    )
    connect_timeout: float = Field(10.0, gt=0, description="TCP + TLS connect timeout (s)")
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="an upstream answer larger than this is refused"
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, description="a streamed SSE event larger than this ends the stream"
    )


# Bounds hold wherever limits are parsed, so nothing out of range reaches the database or the counters: counts
# fit the 32-bit INTEGER columns (Postgres), dollars stay exact as integer micro-dollars in Redis and Lua.
MAX_BUDGET_USD = 1e9
BudgetPeriod = Literal["daily", "monthly", "total"]
COUNT_FIELDS = ("rpm", "tpm", "daily_requests")


class LimitFields(BaseModel):
    """The five limit fields, declared once: configured defaults and the admin API's key, user and policy
    bodies inherit them, and ``limits.spec.LimitSpec`` is their value. None means "no limit of this kind".
    (Here rather than in ``limits/``: routing and http read config, and must not reach limits through it.)"""

    rpm: int | None = Field(None, ge=0, le=MAX_COUNT, description="requests per minute")
    tpm: int | None = Field(None, ge=0, le=MAX_COUNT, description="tokens per minute")
    daily_requests: int | None = Field(None, ge=0, le=MAX_COUNT, description="requests per UTC day")
    budget_usd: float | None = Field(
        None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False, description="spend allowed per budget_period"
    )
    budget_period: BudgetPeriod = Field(
        "total", description="when budget_usd starts again: daily, monthly (UTC) or total (never)"
    )


class LimitSpecConfig(LimitFields, _Strict):
    """A configured default. Counts start at 1 here: a 0 would refuse every client (on a key or a user, 0
    is a deliberate block and allowed)."""

    @field_validator(*COUNT_FIELDS)
    @classmethod
    def _at_least_one(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise PydanticCustomError(
                "greater_than_equal", "Input should be greater than or equal to {ge}", {"ge": 1}
            )
        return value


class LimitsConfig(_Strict):
    per_ip: LimitSpecConfig = Field(default_factory=LimitSpecConfig, description="every client IP")
    per_user: LimitSpecConfig = Field(
        default_factory=LimitSpecConfig, description="users without limits of their own"
    )
    default_completion_tokens: int = Field(
        256, ge=1, description="tokens reserved for the answer when the request sets no max_tokens"
    )


_Usd = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceConfig(_Strict):
    """One entry of `pricing`, in USD. Each price is looked up on its own (usage/cost.py): a price left
    out here falls through to the next entry that matches the model and sets it."""

    input: _Usd | None = Field(None, description="USD per 1M prompt tokens (chat and embeddings)")
    output: _Usd | None = Field(None, description="USD per 1M completion tokens")
    cached_input: _Usd | None = Field(
        None, description="USD per 1M prompt tokens read from the provider's cache (default: input)"
    )
    reasoning: _Usd | None = Field(None, description="USD per 1M reasoning tokens (default: output)")
    image: _Usd | dict[str, _Usd] | None = Field(
        None, description='USD per image, flat or by size: {"1024x1024": 0.04, "*": 0.02} (globs allowed)'
    )
    characters: _Usd | None = Field(None, description="USD per 1M input characters (speech)")
    audio_minute: _Usd | None = Field(None, description="USD per minute of input audio (transcription)")
    video_second: _Usd | None = Field(None, description="USD per second of generated video")

    @model_validator(mode="after")
    def _prices_something(self) -> PriceConfig:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(f"set at least one of {', '.join(type(self).model_fields)}")
        if isinstance(self.image, dict) and (not self.image or not all(self.image)):
            raise ValueError('image: give a price per size, like {"1024x1024": 0.04, "*": 0.02}')
        return self


class FilesConfig(_Strict):
    """Generated files (an image's `url` answer) kept in <data dir>/files and served at signed URLs."""

    url_ttl_seconds: float = Field(3600.0, gt=0, description="a signed file URL works for this long (s)")
    keep_seconds: float | None = Field(
        None, gt=0, description="a file is deleted this long after it was made (s); default url_ttl_seconds"
    )

    @model_validator(mode="after")
    def _keep_covers_url(self) -> FilesConfig:
        if self.keep_seconds is not None and self.keep_seconds < self.url_ttl_seconds:
            raise ValueError("keep_seconds must be at least url_ttl_seconds (a URL would outlive its file)")
        return self


class VideosConfig(_Strict):
    """Video jobs (POST /v1/videos): run in the background, kept in the database."""

    timeout_seconds: float | None = Field(
        None, gt=0, description="one job's deadline across all attempts (s); default routing.deadline"
    )
    max_concurrent: int = Field(2, ge=1, description="jobs one worker runs at a time; the rest wait queued")
    keep_seconds: float = Field(86400.0, gt=0, description="a finished video can be downloaded this long (s)")
    max_runs: int = Field(
        3, ge=1, description="a job interrupted by restarts is run at most this often, then failed"
    )
    lease_seconds: float = Field(
        30.0, ge=1, description="a job whose worker stopped without handing it back is taken over after (s)"
    )


class StatusConfig(_Strict):
    """Provider health and status (GET /v1/status, GET /admin/status): passive from traffic, active probes."""

    probe_interval_seconds: float = Field(
        0.0, ge=0, description="probe each provider this often (s); 0: off, status from traffic only"
    )
    probe_timeout: float = Field(5.0, gt=0, description="longest one probe may take (s)")
    window: float = Field(300.0, gt=0, description="success rate and latency cover this many seconds")
    public: bool = Field(True, description="GET /v1/status without a key (a summary; no keys, no URLs)")

    @field_validator("probe_interval_seconds")
    @classmethod
    def _not_too_often(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("probe at most once a second (or 0: no probes)")
        return value


class SearchConfig(_Strict):
    """Web search (GET /v1/search): DuckDuckGo through the `ddgs` package, or a SearxNG's JSON API."""

    backend: Literal["ddgs", "searxng"] = Field("ddgs", description="ddgs (DuckDuckGo) or searxng")
    url: str | None = Field(None, description="searxng: the instance's base URL (its /search answers JSON)")
    timeout: float = Field(10.0, gt=0, description="longest one search may take (s)")
    cache_seconds: float = Field(60.0, ge=0, description="an answer is reused this long (s); 0: no cache")
    max_limit: int = Field(20, ge=1, le=100, description="the largest `limit` a client may ask for")

    @model_validator(mode="after")
    def _url(self) -> SearchConfig:
        if self.backend == "searxng" and not self.url:
            raise ValueError("url is required for backend: searxng")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
            self.url = self.url.rstrip("/")
        return self


class CacheConfig(_Strict):
    """The response cache: exact-match answers of chat completions, opt-in per model name or alias, or per
    virtual key (its `cache` field)."""

    enabled_for: list[str] = Field(
        default_factory=list, description='model names, aliases or globs ("fast", "groq/*") answered from it'
    )
    ttl_seconds: float = Field(300.0, gt=0, description="an answer is served from the cache this long (s)")
    store: Literal["auto", "memory", "database", "redis"] = Field(
        "auto", description="where answers are kept; auto: Redis with PORTWAY_REDIS_URL, else the database"
    )
    shared: bool = Field(False, description="one namespace for every caller (default: one per key or user)")
    allow_nonzero_temperature: bool = Field(
        False, description="also cache requests sampled with temperature > 0 (or without a temperature)"
    )
    max_entry_bytes: int = Field(1024 * 1024, ge=1024, description="a larger answer is not cached")
    max_memory_entries: int = Field(1024, ge=1, description="store memory: answers kept per worker")


# -- compat: the five seed systems' own APIs (api/compat/, docs/compat.md) ----------------------------------


# Seed 000's Groq fallback list, in its order (its first entry is the request's own `model`).
class HistoryConfig(_Strict):
    """Chat history (/v1/sessions; a completion naming a session with x-portway-session or
    metadata.session_id appends its turn)."""

    prepend: bool = Field(
        False, description="prepend a session's stored messages when the client sent only new ones"
    )
    prepend_max_messages: int = Field(
        200, ge=1, le=10_000, description="stored messages prepended at most (the newest, from a user turn)"
    )
    max_sessions_per_owner: int = Field(1000, ge=1, description="sessions one key, user or master may hold")
    max_message_bytes: int = Field(
        256 * 1024, ge=1024, description="one stored message's JSON size cap; a request over it is a 400"
    )
    write_queue: int = Field(
        10_000, ge=1, description="turns waiting to be written per worker; beyond: dropped and logged"
    )


class CatalogConfig(_Strict):
    """The model catalog (GET /v1/catalog, /v1/models): provider lists merged with the price table."""

    ttl_seconds: float = Field(1800.0, gt=0, description="a provider's stored model list is fresh for (s)")
    refresh: bool = Field(True, description="ask the providers for their model lists in the background")
    timeout_seconds: float = Field(10.0, gt=0, description="longest one provider's model list may take (s)")
    retry_seconds: float = Field(
        60.0, gt=0, description="a provider whose list failed is asked again after this (s); stale meanwhile"
    )


class MetricsConfig(_Strict):
    """Prometheus GET /metrics: needs the master key (or an admin user's token), except on `open_on`."""

    enabled: bool = Field(True, description="collect and serve metrics")
    open_on: list[str] = Field(
        default_factory=list,
        description='local "host:port" addresses on which /metrics needs no key (e.g. "127.0.0.1:8080")',
    )

    @field_validator("open_on")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        for address in value:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"open_on: {address!r} must look like host:port")
        return value


class TracingConfig(_Strict):
    """OpenTelemetry traces over OTLP/HTTP (needs the `otel` extra)."""

    enabled: bool = Field(False, description="export a span per request and per upstream attempt")
    endpoint: str | None = Field(
        None, description="OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (else OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    service_name: str = Field("portway", min_length=1, description="the service.name resource attribute")


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)
    videos: VideosConfig = Field(default_factory=VideosConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    pricing: dict[str, PriceConfig] = Field(
        default_factory=dict, description='"provider/model" or a glob like "groq/*" -> price'
    )
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, list[str]] = Field(default_factory=dict)
    compat: CompatConfig = Field(default_factory=CompatConfig, description="the seed systems' own APIs")

    @model_validator(mode="after")
    def _check_aliases(self) -> GatewayConfig:
        for name in self.providers:
            if "/" in name or not name:
                raise ValueError(f"provider name {name!r} must be non-empty and contain no '/'")
        for alias, targets in self.models.items():
            if not targets:
                raise ValueError(f"models.{alias}: needs at least one target")
            for target in targets:
                provider, sep, model = target.partition("/")
                if not sep or not model:
                    raise ValueError(f"models.{alias}: target {target!r} must look like provider/model")
                if provider not in self.providers:
                    raise ValueError(f"models.{alias}: target {target!r} names unknown provider {provider!r}")
        return self

    def enabled_providers(self) -> dict[str, ProviderConfig]:
        return {name: p for name, p in self.providers.items() if p.enabled}


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(value, str):
        return _ENV_RE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def _format_errors(err: PydanticValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "<config>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        cfg = GatewayConfig.model_validate(interpolate(raw, os.environ if env is None else env))
    except PydanticValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    for name, provider in cfg.providers.items():
        if not provider.enabled:
            log.warning("provider %r has no API key set: disabled (its targets are skipped)", name)
    return cfg


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    env = os.environ if env is None else env
    if path is None:
        return default_config(env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(raw, str(path), env)


# Each env-keyed provider and the models it contributes to the tiers, best first.
_DEFAULT_PROVIDERS: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    (
        "GROQ_API_KEY",
        "groq",
        {"type": "openai", "base_url": "https://api.groq.com/openai/v1"},
        {
            "fast": "llama-3.1-8b-instant",
            "balanced": "llama-3.3-70b-versatile",
            "smart": "llama-3.3-70b-versatile",
        },
    ),
    (
        "OPENROUTER_API_KEY",
        "openrouter",
        {"type": "openai", "base_url": "https://openrouter.ai/api/v1"},
        {
            "fast": "meta-llama/llama-3.1-8b-instruct",
            "balanced": "openai/gpt-4o-mini",
            "smart": "anthropic/claude-3.5-sonnet",
        },
    ),
    (
        "OPENAI_API_KEY",
        "openai",
        {"type": "openai", "base_url": "https://api.openai.com/v1"},
        {"fast": "gpt-4o-mini", "balanced": "gpt-4o-mini", "smart": "gpt-4o"},
    ),
    (
        "HF_TOKEN",
        "hf",
        {"type": "huggingface"},
        {
            "fast": "meta-llama/Llama-3.1-8B-Instruct",
            "balanced": "meta-llama/Llama-3.3-70B-Instruct",
            "smart": "meta-llama/Llama-3.3-70B-Instruct",
        },
    ),
]
_TIER_ORDER = {
    "fast": ["groq", "openrouter", "openai", "hf"],
    "balanced": ["groq", "openrouter", "openai", "hf"],
    "smart": ["openrouter", "openai", "groq", "hf"],
}

# Media alias -> (the local model that ends it, the keyed providers' models before it, best first).
_MEDIA_ALIASES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "text-embedding-3-small": ("all-minilm-l6-v2", [("openai", "text-embedding-3-small")]),
    "tts-1": ("piper-joe", [("openai", "tts-1")]),
    "tts-1-hd": ("piper-joe", [("openai", "tts-1-hd")]),
    "gpt-4o-mini-tts": ("piper-joe", [("openai", "gpt-4o-mini-tts")]),
    "whisper-1": ("whisper-tiny.en", [("openai", "whisper-1"), ("groq", "whisper-large-v3")]),
    "gpt-4o-transcribe": ("whisper-tiny.en", [("openai", "gpt-4o-transcribe"), ("groq", "whisper-large-v3")]),
}


def default_config(env: Mapping[str, str]) -> GatewayConfig:
    providers: dict[str, Any] = {"local": {"type": "local"}}
    tier_models: dict[str, dict[str, str]] = {}
    for var, name, spec, tiers in _DEFAULT_PROVIDERS:
        keys = [k.strip() for k in (env.get(var) or "").split(",") if k.strip()]
        if keys:
            providers[name] = {**spec, "api_keys": keys}
            tier_models[name] = tiers
    models = {
        tier: [f"{p}/{tier_models[p][tier]}" for p in order if p in tier_models] + ["local/smollm2"]
        for tier, order in _TIER_ORDER.items()
    }
    # The model names OpenAI tools send by default, ending in the local media models (no keys needed).
    for alias, (local, keyed) in _MEDIA_ALIASES.items():
        models[alias] = [f"{p}/{m}" for p, m in keyed if p in providers] + [f"local/{local}"]
    return parse_config({"providers": providers, "models": models}, "<defaults>", env)
