"""Anthropic's Messages API as an upstream (`type: anthropic`): chat completions in, Claude behind.

`POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version` (`base_url` default
https://api.anthropic.com). The translation is pure and golden-tested (providers/anthropic_wire.py); this
module drives it over the shared Transport as openai_compat does: errors classified the same way (529
overloaded is a server error), a stream committed once its first whole event is in (an `error` event
before that still falls back). `/v1/messages` from a client to this upstream is passed through
untranslated: `messages_passthrough` (`speaks_messages` says a provider has it). `list_models` reads
`GET {base_url}/v1/models` page by page (`after_id`) for the model catalog.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Protocol

import orjson

from portway.http.client import TLSOptions, Transport, WireRequest
from portway.http.connection import Response
from portway.http.errors import TransportError
from portway.providers.anthropic_wire import (
    DEFAULT_BASE_URL,
    MESSAGES_PATH,
    AnthropicOptions,
    ChunkTranslator,
    PassthroughRelay,
    build_messages_body,
    error_fields,
    parse_passthrough,
    parse_response,
)
from portway.providers.base import (
    BaseProvider,
    ChatCall,
    ChatStream,
    Completion,
    FailureKind,
    ProviderSettings,
    UpstreamFailure,
    Usage,
)
from portway.providers.listing import ListedModel, ListedPage, parse_anthropic_models
from portway.providers.media import Task
from portway.providers.openai_compat import (
    GATEWAY_ONLY_FIELDS,
    _failure,
    classify_http_error,
    collect_pages,
    get_json,
    open_event_stream,
)
from portway.providers.sse import EventSplitter, EventTooLarge

__all__ = ["AnthropicOptions", "AnthropicProvider", "AnthropicStream"]


class _Relay(Protocol):
    """What a stream asks of the event handler: events out for each event in, usage, the end."""

    usage: Usage | None
    served_model: str
    done: bool

    def feed(self, event: bytes) -> list[bytes]: ...


class AnthropicStream:
    """A committed upstream stream, its events handed through a relay (translated or passed through)."""

    def __init__(self, resp: Response, splitter: EventSplitter, first: list[bytes], relay: _Relay) -> None:
        self._resp = resp
        self._splitter = splitter
        self._first = first  # already relayed: an error in the first events fails before the commit
        self._relay = relay
        self.usage: Usage | None = relay.usage
        self.served_model = relay.served_model

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            for event in self._first:
                yield event
            resp, splitter, relay = self._resp, self._splitter, self._relay
            while not relay.done:
                try:
                    chunk = await resp.readany()
                    if not chunk:
                        raise UpstreamFailure(
                            FailureKind.BAD_RESPONSE, "upstream stream ended before message_stop"
                        )
                    events = splitter.feed(chunk)
                except (TransportError, OSError, EventTooLarge) as exc:
                    raise _failure(exc, "upstream stream stalled") from None
                if events:
                    resp.progress()
                for event in events:
                    outs = relay.feed(event)
                    # Before yielding: a client gone at the last event still leaves the usage behind.
                    self.usage, self.served_model = relay.usage, relay.served_model
                    for out in outs:
                        yield out
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._relay.done:
            self._resp.release()
        else:
            self._resp.close()  # closing the connection is how an upstream learns the client went away


# -- the provider ------------------------------------------------------------------------------------------


class AnthropicProvider(BaseProvider):
    type_name = "anthropic"
    default_base_url = DEFAULT_BASE_URL
    Options = AnthropicOptions
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CHAT})
    speaks_messages: ClassVar[bool] = True  # /v1/messages may call messages_passthrough instead of chat

    def __init__(self, settings: ProviderSettings, transport: Transport) -> None:
        super().__init__(settings, transport)
        self.options = AnthropicOptions.model_validate(settings.options)
        self.transport = transport
        # The SDK's base URL has no /v1 (it adds /v1/messages); one written with it works the same.
        root = (settings.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        self._url = root + MESSAGES_PATH
        self._models_url = root + "/v1/models?limit=1000"  # Anthropic's largest page
        self._tls = (
            None
            if settings.verify and not settings.ca_file
            else TLSOptions(settings.verify, settings.ca_file)
        )
        if self._tls is not None:
            transport.tls_context(self._tls)  # a bad ca_file fails at start, not at the first request

    # -- pure ------------------------------------------------------------------------------------------

    def wire_request(self, body: dict[str, Any], key: str | None, stream: bool) -> WireRequest:
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": self.options.anthropic_version,
            **self.settings.headers,
        }
        if stream:
            headers["Accept"] = "text/event-stream"
        if key is not None:
            headers["x-api-key"] = key
        return WireRequest("POST", self._url, headers, orjson.dumps(body), self._tls)

    def list_request(self, key: str | None, after: str | None) -> WireRequest:
        """`GET /v1/models?limit=1000`, the next page `&after_id=` the last id of the one before."""
        headers = {
            "Accept": "application/json",
            "anthropic-version": self.options.anthropic_version,
            **self.settings.headers,
        }
        if key is not None:
            headers["x-api-key"] = key
        url = self._models_url
        if after is not None:
            url += "&after_id=" + urllib.parse.quote(after, safe="")
        return WireRequest("GET", url, headers, b"", self._tls)

    def build_chat_request(self, call: ChatCall) -> tuple[WireRequest, str | None]:
        """The wire request for a chat completions call, and the JSON answer's tool (if any)."""
        body, json_tool = build_messages_body(call.payload, call.model, call.stream, self.options)
        return self.wire_request(body, call.key, call.stream), json_tool

    def build_passthrough_request(self, call: ChatCall) -> WireRequest:
        """A /v1/messages body as the client sent it; only the model (the target's) and `stream` are set."""
        body = {k: v for k, v in call.payload.items() if k not in GATEWAY_ONLY_FIELDS}
        body["model"] = call.model
        if bool(body.get("stream")) != call.stream:
            body["stream"] = call.stream
        return self.wire_request(body, call.key, call.stream)

    def classify_error(self, status: int, headers: Any, body: bytes, key: str | None) -> UpstreamFailure:
        """As for every HTTP upstream (529 overloaded is a server error); the refusal's code is its type."""
        return classify_http_error(status, headers, body, key, error_fields)

    # -- IO --------------------------------------------------------------------------------------------

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """Anthropic's own list, every page (providers/listing.py parse_anthropic_models)."""

        async def page(after: str | None, left: float) -> ListedPage:
            req = self.list_request(key, after)
            return parse_anthropic_models(await get_json(self.transport, req, left, key, self.classify_error))

        return await collect_pages(page, timeout)

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        req, json_tool = self.build_chat_request(call)
        opts = call.payload.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        created = int(time.time())
        return await self._exchange(
            req,
            call,
            lambda body: parse_response(body, call.model, json_tool, created),
            lambda: ChunkTranslator(call.model, json_tool, include_usage, created),
        )

    async def messages_passthrough(self, call: ChatCall) -> Completion | ChatStream:
        """`call.payload` is a Messages API body; the answer's bytes (or events) are Anthropic's own."""
        req = self.build_passthrough_request(call)
        return await self._exchange(
            req, call, lambda body: parse_passthrough(body, call.model), lambda: PassthroughRelay(call.model)
        )

    async def _exchange(
        self,
        req: WireRequest,
        call: ChatCall,
        parse: Callable[[bytes], Completion],
        relay: Callable[[], _Relay],
    ) -> Completion | ChatStream:
        timeout = min(call.timeout, self.settings.timeout or call.timeout)
        try:
            if not call.stream:
                async with await self.transport.send(req, timeout=timeout) as resp:
                    body = await resp.read()
                if resp.status >= 400:
                    raise self.classify_error(resp.status, resp.headers, body, call.key)
                return parse(body)
            return await self._open_stream(req, call, timeout, relay())
        except (TransportError, OSError) as exc:  # (CancelledError is not an Exception: it passes)
            raise _failure(exc, f"no answer within {timeout:g}s") from None

    async def _open_stream(
        self, req: WireRequest, call: ChatCall, timeout: float, relay: _Relay
    ) -> ChatStream:
        resp, splitter, first = await open_event_stream(
            self.transport, req, call, timeout, self.classify_error, relay.feed
        )
        return AnthropicStream(resp, splitter, first, relay)
