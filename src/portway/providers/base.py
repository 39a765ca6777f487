"""The provider seam: what the gateway asks of an upstream, and what comes back.

A provider turns one attempt (ChatCall) into either a Completion (non-stream) or a ChatStream. It raises
UpstreamFailure, classified into a FailureKind, for everything that went wrong; the gateway's attempt loop
decides what to do with each kind (next key, retry, next target, or return to the client). A stream is only
returned once its first event has arrived, so a failure before the first byte can still fall back.

Every provider class derives from BaseProvider and declares there what the config loader needs to know about
its type (name, default URL, whether it needs a key, whether it is free, its options model).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from portway.providers.media import MediaCall, MediaResult, Task

if TYPE_CHECKING:
    from portway.http.client import Transport
    from portway.providers.listing import ListedModel


class FailureKind(enum.Enum):
    AUTH = "auth"  # 401: this key is bad -> out of the pool (re-probed later), try the next key
    FORBIDDEN = "forbidden"  # 403: this key may not use this model -> next target; the key stays
    RATE_LIMIT = "rate_limit"  # 429: cool this key down (Retry-After), next key, then next target
    SERVER = "server"  # 5xx: retry with backoff, then next target
    TIMEOUT = "timeout"  # no (first) byte in time
    CONNECTION = "connection"  # refused, reset, DNS...
    BAD_RESPONSE = "bad_response"  # 2xx that is not a valid answer (garbage, cut stream)
    BAD_REQUEST = "bad_request"  # 400/422: the client's fault -> returned as is, no fallback


class UpstreamFailure(Exception):
    """One failed attempt. `message` is safe to show a client: no key, no upstream secret."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        error_code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.error_code = error_code
        self.param = param


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache (priced apart)
    reasoning_tokens: int = 0  # of completion_tokens, spent reasoning (priced apart where listed)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, raw: Any) -> Usage | None:
        if not isinstance(raw, dict):
            return None
        prompt = raw.get("prompt_tokens")
        completion = raw.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(
            prompt,
            completion,
            _detail(raw, "prompt_tokens_details", "cached_tokens"),
            _detail(raw, "completion_tokens_details", "reasoning_tokens"),
        )


def _detail(raw: dict[str, Any], group: str, name: str) -> int:
    """One count of OpenAI's `*_tokens_details` (absent, null or malformed: 0)."""
    details = raw.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


@dataclass(slots=True)
class ChatCall:
    """One attempt at one target. `payload` is the client's validated body; the provider sets `model`."""

    payload: dict[str, Any]
    model: str
    stream: bool
    key: str | None
    timeout: float  # seconds: whole response (non-stream) or first event (stream)
    idle_timeout: float = 60.0  # stream: longest gap allowed between two events


@dataclass(slots=True)
class Completion:
    body: bytes  # OpenAI chat.completion JSON, handed to the client byte for byte
    usage: Usage | None
    served_model: str
    status: int = 200


@runtime_checkable
class ChatStream(Protocol):
    """Complete SSE events (each ending in a blank line), passed through as they arrive.

    Iterating raises UpstreamFailure if the stream breaks mid-way (reset, cut before `data: [DONE]`,
    idle timeout). `usage` is filled in when the upstream reports it. `aclose()` cancels the upstream
    work (closes the connection, stops local generation) and is safe to call twice.
    """

    usage: Usage | None
    served_model: str

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str

    @property
    def needs_key(self) -> bool: ...

    @property
    def free(self) -> bool: ...

    @property
    def tasks(self) -> frozenset[Task]: ...

    async def chat(self, call: ChatCall) -> Completion | ChatStream: ...

    async def media(self, call: MediaCall) -> MediaResult: ...

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """The upstream's models, for the catalog (raises UpstreamFailure; [] when it lists none)."""

    async def probe(self, key: str | None, timeout: float) -> bool:
        """A cheap health check with `key` (raises UpstreamFailure); False when the type has none."""
        ...

    async def warm(self) -> None:
        """Prepares what the first request would otherwise wait for (the Runtime runs it at start)."""

    async def aclose(self) -> None: ...


def speaks_messages(provider: object) -> bool:
    """Whether a provider takes Anthropic's Messages API as it is (`messages_passthrough`): a /v1/messages
    request to it is passed through untranslated, and its answer is its own bytes."""
    return bool(getattr(provider, "speaks_messages", False))


@dataclass(slots=True)
class ProviderSettings:
    """The provider-specific part of gateway.yaml, as the registry hands it to a provider class."""

    name: str
    type: str
    base_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # per-attempt cap; the request deadline still wins
    stream_usage: bool = True  # ask OpenAI-compatible upstreams for usage in streams
    options: dict[str, Any] = field(default_factory=dict)  # the type's knobs, checked by its Options model
    verify: bool = True  # check the upstream's TLS certificate and host name
    ca_file: str | None = None  # PEM bundle of CAs to trust instead of the system's


class ProviderOptions(BaseModel):
    """A provider type's `options:` in gateway.yaml. Unknown keys are errors, so a typo fails at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseProvider:
    """What every provider class declares, and the no-op defaults both families (HTTP, local) share.

    The declarations are read from the class by the config loader (through the registry) before any
    provider exists: adding a provider type touches only `providers/`.
    """

    type_name: ClassVar[str]  # `type:` in gateway.yaml; the registry maps it back to the class
    default_base_url: ClassVar[str | None] = None  # None: gateway.yaml must set one (if uses_base_url)
    uses_base_url: ClassVar[bool] = True
    needs_key: ClassVar[bool] = True  # without api_keys the provider is disabled
    free: ClassVar[bool] = False  # its answers cost nothing: pricing charges $0 unless a price is set
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CHAT})  # what `chat` and `media` serve

    def __init__(self, settings: ProviderSettings, transport: Transport | None = None) -> None:
        """One signature for every type: the registry builds each as `cls(settings, transport)`, and a
        type that speaks no HTTP (the local model) ignores the Runtime's shared transport."""
        self.name = settings.name
        self.settings = settings

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        raise NotImplementedError

    async def media(self, call: MediaCall) -> MediaResult:
        """Serve a task of `tasks` other than chat (the media service never calls it for the others)."""
        raise NotImplementedError(f"{type(self).__name__} serves no {call.task} calls")

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """No listing: the catalog knows this provider's models from the config and the price table."""
        return []

    async def probe(self, key: str | None, timeout: float) -> bool:
        """The status service's active check (raises UpstreamFailure when the upstream fails it): by
        default its model list, the cheapest authenticated call. False: this type has nothing to check
        (no listing of its own), so its status comes from traffic only."""
        if type(self).list_models is BaseProvider.list_models:
            return False
        await self.list_models(key, timeout)
        return True

    async def warm(self) -> None:
        """Nothing to prepare."""

    async def aclose(self) -> None:
        """Nothing of its own to close: the shared Transport belongs to the Runtime."""
