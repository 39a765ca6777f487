"""Any OpenAI-compatible upstream (Groq, OpenRouter, OpenAI, Together, vLLM, Ollama...).

The adapter part is pure (build_chat_request, parse_chat_response, classify_error) and covered by golden
payload tests; `chat()` drives it over the shared Transport. Subclasses change the declarative part only.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import orjson

from portway.http.client import TLSOptions, Transport, WireRequest
from portway.http.connection import Response
from portway.http.errors import DecodingError, NetworkError, ProtocolError, TimeoutException, TransportError
from portway.providers import openai_media
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
from portway.providers.listing import MAX_MODELS, ListedModel, ListedPage, parse_model_list
from portway.providers.media import MediaCall, MediaResult, Task
from portway.providers.sse import EventSplitter, EventTooLarge, event_data

# Fields that steer the gateway itself and must not reach an upstream.
GATEWAY_ONLY_FIELDS = frozenset({"models"})
_MAX_FIRST_EVENT = 256 * 1024  # an upstream that sends this much without one SSE event is not speaking SSE
_MAX_MESSAGE = 2000  # characters of an upstream's error message relayed to the client
_MAX_FIELD = 200  # characters of an upstream's error code / param relayed to the client
_KEY_GRAM = 8  # any run of this many characters of the key counts as (part of) the key
_MAX_PAGES = 50  # pages of one model list: an upstream whose cursors never end cannot keep us paging


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _status_kind(status: int) -> FailureKind:
    if status == 401:
        return FailureKind.AUTH
    if status == 403:
        return FailureKind.FORBIDDEN  # no permission for this model: the target's failure, not the key's
    if status == 429:
        return FailureKind.RATE_LIMIT
    if status in (400, 404, 409, 413, 422):
        return FailureKind.BAD_REQUEST
    return FailureKind.SERVER


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, code, param) from an OpenAI-style or Hugging Face-style error body; a field that is
    not a non-empty string is dropped."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str):  # Hugging Face: {"error": "message"}
        return err or None, None, None
    if isinstance(err, dict):
        fields = (err.get("message"), err.get("code"), err.get("param"))
        msg, code, param = (f if isinstance(f, str) and f else None for f in fields)
        return msg, code, param
    return None, None, None


def mask_key(text: str | None, key: str | None, limit: int) -> str | None:
    """`text` cut to `limit` characters with the key, and any run of 8+ characters of it, as `***`:
    an upstream may echo our key (or part of it) in any field it sends back."""
    if text is None:
        return None
    text = text[:limit]
    if not key:
        return text
    text = text.replace(key, "***")
    n = min(_KEY_GRAM, len(key))
    if len(text) < n:
        return text
    grams = {key[i : i + n] for i in range(len(key) - n + 1)}
    hidden = bytearray(len(text))
    for i in range(len(text) - n + 1):
        if text[i : i + n] in grams:
            hidden[i : i + n] = b"\x01" * n
    if not any(hidden):
        return text
    out: list[str] = []
    for i, ch in enumerate(text):
        if not hidden[i]:
            out.append(ch)
        elif i == 0 or not hidden[i - 1]:
            out.append("***")
    return "".join(out)


def classify_http_error(
    status: int,
    headers: Any,
    body: bytes,
    key: str | None,
    fields: Callable[[bytes], tuple[str | None, str | None, str | None]] = _error_fields,
) -> UpstreamFailure:
    """The failure for an HTTP error answer. `fields` reads (message, code, param) from the body; they are
    relayed (key masked, cut) for a 400-class refusal only. Shared by every HTTP provider type."""
    kind = _status_kind(status)
    retry_after = parse_retry_after(headers.get("Retry-After")) if kind is FailureKind.RATE_LIMIT else None
    if kind is not FailureKind.BAD_REQUEST:
        # Upstream wording for auth/rate/server errors may echo (part of) our key: never relay it.
        return UpstreamFailure(
            kind, f"upstream returned HTTP {status}", status=status, retry_after=retry_after
        )
    message, code, param = fields(body)
    return UpstreamFailure(
        kind,
        mask_key(message, key, _MAX_MESSAGE) or f"upstream rejected the request (HTTP {status})",
        status=status,
        error_code=mask_key(code, key, _MAX_FIELD),
        param=mask_key(param, key, _MAX_FIELD),
    )


class OpenAICompatProvider(BaseProvider):
    type_name = "openai"
    chat_path: ClassVar[str] = "/chat/completions"
    auth_header: ClassVar[str] = "Authorization"
    auth_scheme: ClassVar[str] = "Bearer "
    # OpenAI parameter name -> this upstream's name (most OpenAI-compatible servers need none).
    param_renames: ClassVar[dict[str, str]] = {}
    # Every OpenAI media endpoint, each passed to the same path under base_url (providers/openai_media.py;
    # video jobs: providers/openai_video.py).
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CHAT, Task.VIDEO}) | openai_media.TASKS

    def __init__(self, settings: ProviderSettings, transport: Transport) -> None:
        if not settings.base_url:
            raise ValueError(f"provider {settings.name}: base_url is required")
        super().__init__(settings, transport)
        self.Options.model_validate(settings.options)  # this family has none: a stray one is an error
        self.transport = transport
        self._url = settings.base_url.rstrip("/") + self.chat_path
        self._tls = (
            None
            if settings.verify and not settings.ca_file
            else TLSOptions(settings.verify, settings.ca_file)
        )
        if self._tls is not None:
            transport.tls_context(self._tls)  # a bad ca_file fails at start, not at the first request

    # -- pure adapter ---------------------------------------------------------------------------------

    def build_chat_request(self, call: ChatCall) -> tuple[WireRequest, bool]:
        """The wire request, and whether we asked for stream usage the client did not ask for."""
        body = {k: v for k, v in call.payload.items() if k not in GATEWAY_ONLY_FIELDS}
        body["model"] = call.model
        injected = False
        if call.stream and self.settings.stream_usage:
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                body["stream_options"] = {**(opts or {}), "include_usage": True}
                injected = True
        for src, dst in self.param_renames.items():
            if src in body:
                body[dst] = body.pop(src)
        headers = {"Content-Type": "application/json", **self.settings.headers}
        if call.stream:
            headers["Accept"] = "text/event-stream"
        if call.key is not None:
            headers[self.auth_header] = self.auth_scheme + call.key
        return WireRequest("POST", self._url, headers, orjson.dumps(body), self._tls), injected

    def classify_error(self, status: int, headers: Any, body: bytes, key: str | None) -> UpstreamFailure:
        return classify_http_error(status, headers, body, key)

    def parse_chat_response(self, body: bytes, model: str) -> Completion:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent a body that is not JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, "upstream sent JSON that is not a chat completion"
            )
        served = obj.get("model")
        return Completion(
            body, Usage.from_openai(obj.get("usage")), served if isinstance(served, str) else model
        )

    # -- IO --------------------------------------------------------------------------------------------

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """GET {base_url}/models: OpenAI's, OpenRouter's and Hugging Face's shapes (providers/listing.py)."""
        headers = {"Accept": "application/json", **self.settings.headers}
        if key is not None:
            headers[self.auth_header] = self.auth_scheme + key
        url = (self.settings.base_url or "").rstrip("/") + "/models"
        req = WireRequest("GET", url, headers, b"", self._tls)
        return parse_model_list(await get_json(self.transport, req, timeout, key, self.classify_error))

    async def media(self, call: MediaCall) -> MediaResult:
        if call.task is Task.VIDEO:
            from portway.providers.openai_video import video  # (it imports this module)

            return await video(self, call)
        return await openai_media.media(self, call)

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        req, injected = self.build_chat_request(call)
        timeout = min(call.timeout, self.settings.timeout or call.timeout)
        try:
            if not call.stream:
                return await self._complete(req, call, timeout)
            return await self._open_stream(req, call, timeout, injected)
        except (TransportError, OSError) as exc:  # (CancelledError is not an Exception: it passes)
            raise _failure(exc, f"no answer within {timeout:g}s") from None

    async def _complete(self, req: WireRequest, call: ChatCall, timeout: float) -> Completion:
        async with await self.transport.send(req, timeout=timeout) as resp:
            body = await resp.read()
        if resp.status >= 400:
            raise self.classify_error(resp.status, resp.headers, body, call.key)
        return self.parse_chat_response(body, call.model)

    async def _open_stream(
        self, req: WireRequest, call: ChatCall, timeout: float, injected: bool
    ) -> ChatStream:
        resp, splitter, first = await open_event_stream(
            self.transport, req, call, timeout, self.classify_error
        )
        return HttpChatStream(resp, splitter, first, strip_usage=injected, model=call.model)


async def open_event_stream(
    transport: Transport,
    req: WireRequest,
    call: ChatCall,
    timeout: float,
    classify: Callable[[int, Any, bytes, str | None], UpstreamFailure],
    translate: Callable[[bytes], list[bytes]] | None = None,
) -> tuple[Response, EventSplitter, list[bytes]]:
    """Send a streaming request and read until its first whole event (translated, if the upstream speaks
    another protocol): only then is the stream committed, so anything before can still fall back.

    `timeout` (the first-byte timeout) covers the answer up to that event; after it only the idle timeout
    between whole events applies. The response is closed on every failure.
    """
    resp: Response | None = None
    try:
        resp = await transport.send(req, timeout=timeout, read_timeout=call.idle_timeout)
        if resp.status >= 400:
            raise classify(resp.status, resp.headers, await resp.read(), call.key)
        splitter = EventSplitter(transport.max_event_bytes)
        first = await _first_events(resp, splitter)
        if translate is not None:
            first = [out for event in first for out in translate(event)]
        resp.clear_deadline()
        resp.idle_by_progress()  # committed: the idle timeout now counts gaps between whole events
    except BaseException:
        if resp is not None:
            resp.close()
        raise
    return resp, splitter, first


async def get_json(
    transport: Transport,
    req: WireRequest,
    timeout: float,
    key: str | None,
    classify: Callable[[int, Any, bytes, str | None], UpstreamFailure],
) -> Any:
    """The parsed JSON body of a request answered within `timeout` (model lists): an error status is
    `classify`'s failure, a transport error or a body that is not JSON an UpstreamFailure."""
    try:
        async with await transport.send(req, timeout=timeout) as resp:
            body = await resp.read()
    except (TransportError, OSError) as exc:
        raise _failure(exc, f"no model list within {timeout:g}s") from None
    if resp.status >= 400:
        raise classify(resp.status, resp.headers, body, key)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "a model list that is not JSON") from None


async def collect_pages(
    fetch: Callable[[str | None, float], Awaitable[ListedPage]], timeout: float
) -> list[ListedModel]:
    """Every page of a paged model list, `fetch(cursor, seconds_left)` for each, within one `timeout`:
    a list cut short would drop models from the catalog, so running out of time fails the whole list
    (the catalog then serves the last one). Ends at the last page, a cursor seen before, MAX_MODELS models
    or _MAX_PAGES pages."""
    deadline = time.monotonic() + timeout
    models: dict[str, ListedModel] = {}
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(_MAX_PAGES):
        left = deadline - time.monotonic()
        if left <= 0:
            raise UpstreamFailure(FailureKind.TIMEOUT, f"no model list within {timeout:g}s")
        page = await fetch(cursor, left)
        for model in page.models:
            models.setdefault(model.model, model)
        if page.next is None or page.next in seen or len(models) >= MAX_MODELS:
            break
        seen.add(page.next)
        cursor = page.next
    return list(models.values())[:MAX_MODELS]


def _failure(exc: BaseException, timeout_message: str) -> UpstreamFailure:
    """The router's failure kind for a transport error (httpx's tree: timeout, network, protocol,
    decoding), or for an SSE event past its cap."""
    if isinstance(exc, TimeoutException):
        return UpstreamFailure(FailureKind.TIMEOUT, timeout_message)
    if isinstance(exc, DecodingError):
        return UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream body could not be decoded")
    if isinstance(exc, ProtocolError):
        return UpstreamFailure(FailureKind.BAD_RESPONSE, "malformed upstream response")
    if isinstance(exc, EventTooLarge):
        return UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream sent an event larger than the cap")
    if isinstance(exc, NetworkError | OSError):
        return UpstreamFailure(FailureKind.CONNECTION, f"connection failed: {type(exc).__name__}")
    return UpstreamFailure(FailureKind.CONNECTION, "upstream call failed")


async def _first_events(resp: Response, splitter: EventSplitter) -> list[bytes]:
    """Read until one whole event is in: only then is the stream committed to this upstream."""
    first: list[bytes] = []
    while not first:
        chunk = await resp.readany()
        if not chunk:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream stream ended before any event")
        try:
            first = splitter.feed(chunk)
        except EventTooLarge:
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, "upstream did not send server-sent events"
            ) from None
        if not first and splitter.pending_bytes > _MAX_FIRST_EVENT:
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream did not send server-sent events")
    if not first[0].lstrip().startswith((b"data:", b":", b"event:", b"id:", b"retry:")):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream did not send server-sent events")
    return first


class HttpChatStream:
    """Pass-through of upstream SSE events; notes usage and [DONE]; turns a broken stream into an error."""

    def __init__(
        self,
        resp: Response,
        splitter: EventSplitter,
        first: list[bytes],
        *,
        strip_usage: bool,
        model: str,
    ) -> None:
        self._resp = resp
        self._splitter = splitter
        self._first = first
        self._strip_usage = strip_usage
        self._done = False
        self.usage: Usage | None = None
        self.served_model = _served_model(first[0]) or model

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            for event in self._first:
                if self._keep(event):
                    yield event
            resp, splitter = self._resp, self._splitter
            while not self._done:
                try:
                    chunk = await resp.readany()
                    if not chunk:
                        raise UpstreamFailure(FailureKind.BAD_RESPONSE, "upstream stream ended before [DONE]")
                    events = splitter.feed(chunk)
                except (TransportError, OSError, EventTooLarge) as exc:
                    raise _failure(exc, "upstream stream stalled") from None
                if events:
                    resp.progress()
                for event in events:
                    if self._keep(event):
                        yield event
        finally:
            await self.aclose()

    def _keep(self, event: bytes) -> bool:
        """Note [DONE] and usage; drop the usage-only chunk when only we asked for it."""
        if b"[DONE]" in event and event_data(event) == b"[DONE]":
            self._done = True
            return True
        if b'"usage"' not in event:
            return True
        data = event_data(event)
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return True
        if not isinstance(obj, dict):
            return True
        usage = Usage.from_openai(obj.get("usage"))
        if usage is not None:
            self.usage = usage
            if self._strip_usage and obj.get("choices") == []:
                return False
        return True

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            self._resp.close()  # closing the connection is how an upstream learns the client went away


def _served_model(event: bytes) -> str | None:
    data = event_data(event)
    if not data or data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, str) else None
