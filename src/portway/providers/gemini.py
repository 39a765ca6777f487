"""Google's Gemini API (`generateContent` / `streamGenerateContent`), behind the chat completions seam.

`POST {base_url}/{api_version}/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse`
(server-sent events, one whole GenerateContentResponse each, no `[DONE]`: the body's end is the end). The key
goes in `x-goog-api-key`, never in the URL, and never into an error we relay.

The translation is pure and golden-tested (`gemini_translate`: messages, tools, answers and streams;
`gemini_schema`: JSON Schema -> Gemini's Schema); this module classifies Google's errors and drives the
translation over the shared Transport like `openai_compat`: a stream is returned once its first event has
arrived and been translated, so an upstream error up to then still falls back. `list_models` reads
`GET {base_url}/{api_version}/models` page by page (`pageToken`) for the model catalog.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import Field

from portway.http.client import TLSOptions, Transport, WireRequest
from portway.http.connection import Response
from portway.http.errors import TransportError
from portway.providers.base import (
    BaseProvider,
    ChatCall,
    ChatStream,
    Completion,
    FailureKind,
    ProviderOptions,
    ProviderSettings,
    UpstreamFailure,
    Usage,
)
from portway.providers.gemini_schema import SchemaMode
from portway.providers.gemini_translate import (
    NewId,
    StreamTranslator,
    build_body,
    completion_from,
    new_call_id,
)
from portway.providers.listing import ListedModel, ListedPage, parse_gemini_models
from portway.providers.openai_compat import (
    _MAX_FIELD,
    _MAX_MESSAGE,
    _failure,
    _status_kind,
    collect_pages,
    get_json,
    mask_key,
    open_event_stream,
    parse_retry_after,
)
from portway.providers.sse import EventSplitter, EventTooLarge, event_data

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiOptions(ProviderOptions):
    api_version: str = Field(
        "v1beta",
        pattern=r"^v\d+(alpha|beta)?\d*$",
        description="the API version in the path: {base_url}/{api_version}/models/{model}:generateContent",
    )
    schemas: SchemaMode = Field(
        "translate",
        description="translate: JSON Schema becomes Gemini's OpenAPI-subset Schema (parameters, "
        "responseSchema; every model); json_schema: sent as is (parametersJsonSchema, responseJsonSchema)",
    )


# -- errors --------------------------------------------------------------------------------------------


def _google_error(body: bytes) -> dict[str, Any]:
    """The `error` object of a Google API error body ({} when there is none)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(obj, list) and obj:  # the JSON-array form of streamGenerateContent without alt=sse
        obj = obj[0]
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else {}


def _details(err: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = err.get("details")
    suffix = "google.rpc." + kind
    return [
        d
        for d in (details if isinstance(details, list) else ())
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(suffix)
    ]


def _retry_delay(err: dict[str, Any]) -> float | None:
    """google.rpc.RetryInfo's retryDelay ("37s", "1.5s"), Gemini's way of saying when to come back."""
    for info in _details(err, "RetryInfo"):
        delay = info.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def classify_error(status: int, headers: Any, body: bytes, key: str | None) -> UpstreamFailure:
    err = _google_error(body)
    kind = _status_kind(status)
    # A bad key is a 400 INVALID_ARGUMENT at Google, told apart by its ErrorInfo reason (API_KEY_INVALID).
    if status == 400 and any(
        str(d.get("reason", "")).startswith("API_KEY_") for d in _details(err, "ErrorInfo")
    ):
        kind = FailureKind.AUTH
    if kind is not FailureKind.BAD_REQUEST:
        retry_after = None
        if kind is FailureKind.RATE_LIMIT:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            retry_after = _retry_delay(err) if retry_after is None else retry_after
        # Wording of auth / quota / server errors may echo (part of) the key: never relayed.
        return UpstreamFailure(
            kind, f"upstream returned HTTP {status}", status=status, retry_after=retry_after
        )
    message, code = err.get("message"), err.get("status")
    return UpstreamFailure(
        kind,
        mask_key(message if isinstance(message, str) and message else None, key, _MAX_MESSAGE)
        or f"upstream rejected the request (HTTP {status})",
        status=status,
        error_code=mask_key(code if isinstance(code, str) and code else None, key, _MAX_FIELD),
    )


# -- the provider (IO) ---------------------------------------------------------------------------------


def model_path(model: str) -> str:
    """`models/{model}` (a `models/` or `tunedModels/` prefix is kept), each segment URL-quoted."""
    name = model if model.startswith(("models/", "tunedModels/")) else "models/" + model
    return "/".join(urllib.parse.quote(seg, safe="@-._~") for seg in name.split("/"))


class GeminiProvider(BaseProvider):
    type_name = "gemini"
    default_base_url = DEFAULT_BASE_URL
    Options = GeminiOptions

    def __init__(self, settings: ProviderSettings, transport: Transport) -> None:
        if not settings.base_url:
            raise ValueError(f"provider {settings.name}: base_url is required")
        super().__init__(settings, transport)
        options = GeminiOptions.model_validate(settings.options)
        self.transport = transport
        self.schemas: SchemaMode = options.schemas
        root = settings.base_url.rstrip("/")
        # A base_url given with the version already in it is taken as is.
        self._root = root if root.endswith("/" + options.api_version) else f"{root}/{options.api_version}"
        self._tls = (
            None
            if settings.verify and not settings.ca_file
            else TLSOptions(settings.verify, settings.ca_file)
        )
        if self._tls is not None:
            transport.tls_context(self._tls)  # a bad ca_file fails at start, not at the first request

    def build_chat_request(self, call: ChatCall) -> WireRequest:
        body = build_body(call.payload, self.schemas)
        action = ":streamGenerateContent?alt=sse" if call.stream else ":generateContent"
        headers = {"Content-Type": "application/json", **self.settings.headers}
        if call.stream:
            headers["Accept"] = "text/event-stream"
        if call.key is not None:
            headers["x-goog-api-key"] = call.key
        url = f"{self._root}/{model_path(call.model)}{action}"
        return WireRequest("POST", url, headers, orjson.dumps(body), self._tls)

    def list_request(self, key: str | None, token: str | None) -> WireRequest:
        """`GET models?pageSize=1000` (Google's largest page), the next page `&pageToken=` the last page's
        nextPageToken; the key in its header, as for chat."""
        headers = {"Accept": "application/json", **self.settings.headers}
        if key is not None:
            headers["x-goog-api-key"] = key
        url = f"{self._root}/models?pageSize=1000"
        if token is not None:
            url += "&pageToken=" + urllib.parse.quote(token, safe="")
        return WireRequest("GET", url, headers, b"", self._tls)

    def parse_chat_response(self, body: bytes, model: str, new_id: NewId = new_call_id) -> Completion:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent a body that is not JSON") from None
        if not isinstance(obj, dict) or not obj.keys() & {"candidates", "promptFeedback", "usageMetadata"}:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent JSON that is not a Gemini answer")
        completion = completion_from(obj, model, new_id, int(time.time()))
        usage = Usage.from_openai(completion.get("usage"))
        return Completion(orjson.dumps(completion), usage, completion["model"])

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """Gemini's own list, every page; only models that answer generateContent (listing.py)."""

        async def page(token: str | None, left: float) -> ListedPage:
            req = self.list_request(key, token)
            return parse_gemini_models(await get_json(self.transport, req, left, key, classify_error))

        return await collect_pages(page, timeout)

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        req = self.build_chat_request(call)
        timeout = min(call.timeout, self.settings.timeout or call.timeout)
        try:
            if not call.stream:
                async with await self.transport.send(req, timeout=timeout) as resp:
                    body = await resp.read()
                if resp.status >= 400:
                    raise classify_error(resp.status, resp.headers, body, call.key)
                return self.parse_chat_response(body, call.model)
            return await self._open_stream(req, call, timeout)
        except (TransportError, OSError) as exc:  # (CancelledError is not an Exception: it passes)
            raise _failure(exc, f"no answer within {timeout:g}s") from None

    async def _open_stream(self, req: WireRequest, call: ChatCall, timeout: float) -> ChatStream:
        options = call.payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        translator = StreamTranslator(call.model, include_usage)
        # Translated before the stream is committed: an error in the first event can still fall back.
        resp, splitter, first = await open_event_stream(
            self.transport, req, call, timeout, classify_error, lambda event: _translate(translator, event)
        )
        return GeminiChatStream(resp, splitter, first, translator)


def _translate(translator: StreamTranslator, event: bytes) -> list[bytes]:
    data = event_data(event)
    if not data:
        return []
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent an event that is not JSON") from None
    return translator.feed(obj)


class GeminiChatStream:
    """The translated stream: chat.completion.chunk events as Gemini's arrive, `[DONE]` at the body's end."""

    def __init__(
        self, resp: Response, splitter: EventSplitter, first: list[bytes], translator: StreamTranslator
    ) -> None:
        self._resp = resp
        self._splitter = splitter
        self._first = first
        self._translator = translator
        self._done = False
        self.usage: Usage | None = Usage.from_openai(translator.usage)
        self.served_model = translator.model

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        translator, resp, splitter = self._translator, self._resp, self._splitter
        try:
            for chunk in self._first:
                yield chunk
            while True:
                try:
                    data = await resp.readany()
                    if not data:
                        break
                    events = splitter.feed(data)
                except (TransportError, OSError, EventTooLarge) as exc:
                    raise _failure(exc, "upstream stream stalled") from None
                if events:
                    resp.progress()
                for event in events:
                    chunks = _translate(translator, event)
                    self.usage = Usage.from_openai(translator.usage) or self.usage
                    for chunk in chunks:
                        yield chunk
            tail = translator.end()  # raises when the body ended before every answer finished
            self._done = True
            for chunk in tail:
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            self._resp.close()  # closing the connection is how an upstream learns the client went away
