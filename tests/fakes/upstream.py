"""A deterministic fake OpenAI upstream: a real aiohttp server with per-request fault injection.

The server runs on its own event loop in a daemon thread so sync tests, async tests and an in-process
gateway on another loop can all talk to it. Responses depend only on the request body, so a response
fetched through the gateway can be compared byte-for-byte with one fetched directly.

Fault precedence: ``x-fake-fault`` header > script queue > ``model@fault`` > API key (``bad*`` -> 401,
``forbidden*`` -> 403, missing -> 401) > ``ok``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.fakes import hf_tasks
from tests.fakes.videos import FakeVideos

CREATED = 1700000000
FINGERPRINT = "fp_fake"
MODEL_IDS = ("fake-model", "fake-model-mini", "fake-embed")
_POLL = 0.05
# OpenRouter's /models shape: USD per token as strings, context_length, architecture's modalities.
OPENROUTER_MODELS: list[dict[str, Any]] = [
    {
        "id": "vendor/vision-pro",
        "created": 1720000000,
        "context_length": 128000,
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"]},
        "pricing": {
            "prompt": "0.000002",
            "completion": "0.000008",
            "input_cache_read": "0.0000005",
            "internal_reasoning": "0.00001",
        },
    },
    {
        "id": "vendor/text-small",
        "created": 1710000000,
        "context_length": 32768,
        "architecture": {"modality": "text->text"},
        "pricing": {"prompt": "0.0000001", "completion": "0.0000004"},
    },
    {
        "id": "vendor/text-small:free",
        "created": 1710000001,
        "context_length": 32768,
        "architecture": {"modality": "text->text"},
        "pricing": {"prompt": "0", "completion": "0"},
    },
]

# status -> (type, code, message); shapes mirror what api.openai.com returns.
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request", "Fake upstream rejected the request."),
    401: ("invalid_request_error", "invalid_api_key", ""),
    403: ("permission_error", "forbidden", "You are not allowed to use this model."),
    404: ("invalid_request_error", "not_found", "Not found."),
    422: ("invalid_request_error", "unprocessable_entity", "Fake upstream could not process the request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", "internal_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
}
_PLAIN_FAULTS = {"ok", "reset", "cut", "garbage", "hang", "nousage"}  # nousage: an answer without usage


def parse_fault(fault: str) -> tuple[str, str]:
    """Split ``kind:arg`` and validate it, so a typo in a test fails loudly instead of meaning "ok"."""
    kind, _, arg = fault.strip().partition(":")
    if kind in _PLAIN_FAULTS or (kind.isdigit() and int(kind) in _ERRORS and kind != "429"):
        if not arg:
            return kind, ""
    elif kind == "429":
        if not arg or _is_number(arg):
            return kind, arg or "1"
    elif kind in ("slow", "slowchunks", "loading") and _is_number(arg):  # loading: HF's cold-model 503
        return kind, arg
    raise ValueError(f"unknown fake fault {fault!r}")


def _is_number(s: str) -> bool:
    try:
        return float(s) >= 0
    except ValueError:
        return False


@dataclass(frozen=True)
class RecordedFile:
    """A file of a multipart request, as the fake read it (never kept: its size and hash only)."""

    field: str
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass
class RecordedRequest:
    path: str
    model: str | None
    key: str | None
    stream: bool
    body: dict[str, Any] | None
    headers: dict[str, str]  # names lower-cased
    fault: str
    completed: bool = False
    disconnected: bool = False
    disconnected_at: float | None = None  # time.monotonic() when the client's connection was seen closed
    files: list[RecordedFile] = field(default_factory=list)  # multipart uploads (body: the text fields)

    def gone(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.disconnected = True


@dataclass
class _Script:
    faults: deque[str]
    model: str | None
    key: str | None

    def matches(self, model: str | None, key: str | None) -> bool:
        return (
            bool(self.faults)
            and (self.model is None or self.model == model)
            and (self.key is None or self.key == key)
        )


@dataclass
class _Answer:
    id: str
    model: Any
    words: list[str]
    finish_reason: str
    prompt_tokens: int
    chunk_base: dict[str, Any] = field(init=False)
    cached: int = 0  # of prompt_tokens, "read from the cache" (the request's `fake_usage`)
    reasoning: int = 0  # added to completion_tokens, "spent reasoning"

    def __post_init__(self) -> None:
        self.chunk_base = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }

    @property
    def usage(self) -> dict[str, Any]:
        done = len(self.words) + self.reasoning
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }
        if self.cached or self.reasoning:  # OpenAI's details, only when asked for (answers stay as they were)
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        return usage

    def completion(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": " ".join(self.words)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.chunk_base, "choices": [choice]}

    def word_chunks(self) -> list[dict[str, Any]]:
        last = len(self.words) - 1
        return [self.chunk({"content": w if i == last else w + " "}) for i, w in enumerate(self.words)]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def build_answer(body: dict[str, Any]) -> _Answer:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = [m for m in messages if m.get("role") == "user"]
    # Whitespace is normalised so the streamed words re-join to exactly the non-stream content.
    words = ("Echo: " + (_text(user[-1].get("content")) if user else "")).split()
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    finish = "stop"
    if isinstance(limit, int) and 0 <= limit < len(words):
        words, finish = words[:limit], "length"
    # stream_options only decides whether a usage chunk is sent, not what the answer is: leaving it out
    # of the id lets a gateway that asks for usage on its own still be compared chunk for chunk.
    answer_fields = {k: v for k, v in body.items() if k != "stream_options"}
    digest = hashlib.sha256(json.dumps(answer_fields, sort_keys=True).encode()).hexdigest()[:12]
    prompt = sum(len(_text(m.get("content")).split()) for m in messages)
    answer = _Answer("chatcmpl-" + digest, body.get("model"), words, finish, prompt)
    asked = body.get("fake_usage")  # {"cached_tokens": n, "reasoning_tokens": m}: usage with details
    if isinstance(asked, dict):
        answer.cached = min(int(asked.get("cached_tokens") or 0), prompt)
        answer.reasoning = int(asked.get("reasoning_tokens") or 0)
    return answer


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else auth.strip()
    return request.headers.get("x-api-key")


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def _error(status: int, key: str | None, message: str | None = None) -> dict[str, Any]:
    kind, code, default = _ERRORS[status]
    if status == 401 and message is None:
        default = f"Incorrect API key provided: {key[:3]}***" if key else "You didn't provide an API key."
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, record: bool = True) -> None:
        self._host, self._port = host, port
        self._record = record  # off for long benchmark runs, where the journal would only grow
        self._lock = threading.Lock()
        self._journal: list[RecordedRequest] = []
        self._scripts: list[_Script] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None
        self.videos = FakeVideos(self)  # OpenAI's video jobs (tests/fakes/videos.py)
        # GET /models: None answers MODEL_IDS (OpenAI's shape); a list (OPENROUTER_MODELS, say) is answered
        # as it is; `models_fault` ("503", "hang"...) fails every listing, for a provider that is down
        # (Anthropic's and Gemini's listings too: tests/fakes/anthropic.py, gemini.py).
        self.models_data: list[dict[str, Any]] | None = None
        self.models_fault: str | None = None
        self.model_listings = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), daemon=True, name="fake-upstream"
        )
        self._thread.start()
        ready.wait(10)
        if failure or self._bound_port is None:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError("fake upstream failed to start") from (failure[0] if failure else None)
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/hf-inference/models/{model:.+}", self._hf_task)
        self.videos.routes(app)
        from tests.fakes import openai_media  # (imports this module: here, not at the top)

        openai_media.add_routes(self, app)  # /v1/embeddings, /v1/images/*, /v1/audio/*
        from tests.fakes import gemini

        gemini.add_routes(self, app)  # /v1beta/models/{model}:generateContent, :streamGenerateContent
        from tests.fakes import anthropic

        anthropic.add_routes(self, app)  # /v1/messages: Anthropic's Messages API (tests/fakes/anthropic.py)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # handler_cancellation turns a client disconnect into CancelledError inside the handler,
        # which is how `disconnected` gets recorded for requests that are parked in a sleep.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self._bound_port = self._runner.addresses[0][1]

    def stop(self) -> None:
        thread, loop, runner = self._thread, self._loop, self._runner
        if thread is None or loop is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = self._runner = None
        self._bound_port = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("FakeUpstream is not started")
        return f"http://{self._host}:{self._bound_port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    # -- scripting and journal -------------------------------------------------------------------
    def script(self, faults: list[str], *, model: str | None = None, key: str | None = None) -> None:
        for fault in faults:
            parse_fault(fault)
        with self._lock:
            self._scripts.append(_Script(deque(faults), model, key))

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._journal.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        # The list is a copy; the records are live so completed/disconnected keep updating.
        with self._lock:
            return list(self._journal)

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], object], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.requests):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    async def wait_for_async(
        self,
        predicate: Callable[[list[RecordedRequest]], object],
        timeout: float = 5.0,
    ) -> bool:
        """Like wait_for, but yields to the caller's loop (e.g. an in-process gateway)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.requests):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _pick_fault(self, request: web.Request, model: str | None, key: str | None, scripted: bool) -> str:
        header = request.headers.get("x-fake-fault")
        if header:
            return header
        if scripted:
            with self._lock:
                for s in self._scripts:
                    if s.matches(model, key):
                        return s.faults.popleft()
        if model and "@" in model:
            return model.split("@", 1)[1]
        if key is None or key.startswith("bad"):
            return "401"
        return "403" if key.startswith("forbidden") else "ok"

    # -- handlers --------------------------------------------------------------------------------
    def _new_record(
        self, request: web.Request, fault: str, key: str | None, body: dict[str, Any] | None = None
    ) -> RecordedRequest:
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        stream = body is not None and body.get("stream") is True
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = RecordedRequest(request.path, model, key, stream, body, headers, fault)
        if self._record:
            with self._lock:
                self._journal.append(rec)
        return rec

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        model = body.get("model") if body is not None and isinstance(body.get("model"), str) else None
        key = _bearer(request)
        rec = self._new_record(request, self._pick_fault(request, model, key, scripted=True), key, body)
        if body is None and rec.fault == "ok":
            return await self._send(request, rec, 400, _error(400, key, "Request body must be JSON."))
        from tests.fakes import chat_tools  # (imports this module: here, not at the top)

        answer = chat_tools.tool_answer(body or {}) or build_answer(body or {})  # tools: chat_tools.py
        return await self._guard(request, rec, answer.completion(), answer)

    def count_listing(self) -> None:
        with self._lock:
            self.model_listings += 1

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if "anthropic-version" in request.headers:  # every Anthropic client sends it; OpenAI's never do
            from tests.fakes import anthropic  # Anthropic's GET /v1/models: same path, its own shape

            return await anthropic.list_models(self, request)
        key = _bearer(request)
        # Scripts are for chat traffic only: a gateway's background model listing must not eat them, nor
        # show in the journal (tests read it for their own calls); `model_listings` counts them instead.
        fault = self._pick_fault(request, None, key, scripted=False)
        fault = self.models_fault or fault
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = RecordedRequest(request.path, None, key, False, None, headers, fault)
        self.count_listing()
        data = self.models_data
        if data is None:
            data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODEL_IDS]
        return await self._guard(request, rec, {"object": "list", "data": data}, None)

    async def _hf_task(self, request: web.Request) -> web.StreamResponse:
        """Hugging Face's task API (answers in tests/fakes/hf_tasks.py); the model id is in the path."""
        raw = await request.read()
        model, key = request.match_info["model"], _bearer(request)
        content_type = request.headers.get("Content-Type", "")
        try:
            parsed = json.loads(raw) if content_type.startswith("application/json") else None
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        rec = self._new_record(request, self._pick_fault(request, model, key, scripted=True), key, body)
        rec.model = model
        kind, _, arg = rec.fault.partition(":")
        if kind == "slow" and _is_number(arg) and not await self._sleep(request, rec, float(arg)):
            return web.Response()
        if kind == "loading" and _is_number(arg):
            status, media, data = hf_tasks.loading(model, float(arg))
        elif kind in ("ok", "slow"):
            status, media, data = hf_tasks.answer(model, content_type, raw)
        else:  # the shared faults: HTTP errors, reset, hang, garbage...
            return await self._guard(request, rec, {}, None)
        resp = web.Response(status=status, body=data, headers={"Content-Type": media})
        return await self._finish(request, rec, resp)

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        rec = self._new_record(request, "ok", _bearer(request))
        return await self._send(request, rec, 404, _error(404, rec.key, f"Unknown path {request.path}"))

    async def _guard(
        self, request: web.Request, rec: RecordedRequest, ok: dict[str, Any], answer: _Answer | None
    ) -> web.StreamResponse:
        try:
            return await self._respond(request, rec, ok, answer)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            # aiohttp cancels the handler when the client goes away (handler_cancellation=True);
            # either way our final write did not finish, so undo the optimistic `completed`.
            rec.completed = False
            rec.gone()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response()

    async def early_fault(
        self, request: web.Request, rec: RecordedRequest
    ) -> tuple[str, str, web.StreamResponse | None]:
        """The request's fault mode, and the answer when the fault decides it before any body is made:
        a bad fault spec (400), hang, slow (the client gave up), an HTTP status, a reset."""
        try:
            kind, arg = parse_fault(rec.fault)
        except ValueError as exc:
            return "", "", await self._send(request, rec, 400, _error(400, rec.key, str(exc)))
        if kind == "hang":
            await self._sleep(request, rec, float("inf"))
            return kind, arg, web.Response()
        if kind == "slow" and not await self._sleep(request, rec, float(arg)):
            return kind, arg, web.Response()
        if kind.isdigit():
            headers = {"Retry-After": arg} if kind == "429" else {}
            return kind, arg, await self._send(request, rec, int(kind), _error(int(kind), rec.key), headers)
        if kind == "reset":
            _abort(request)
            return kind, arg, web.Response()
        return kind, arg, None

    async def _respond(
        self, request: web.Request, rec: RecordedRequest, ok: dict[str, Any], answer: _Answer | None
    ) -> web.StreamResponse:
        kind, arg, early = await self.early_fault(request, rec)
        if early is not None:
            return early
        stream = rec.stream and answer is not None
        if kind == "garbage":
            content_type = "text/event-stream" if stream else "application/json"
            junk = web.Response(body=b"<html>oops</html>\n", headers={"Content-Type": content_type})
            return await self._finish(request, rec, junk)
        if stream and answer is not None:
            gap = float(arg) if kind == "slowchunks" else 0.0
            return await self._stream(request, rec, answer, gap, cut=kind == "cut")
        if kind == "cut":
            payload = _dumps(ok)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            _abort(request)
            return resp
        if kind == "nousage":
            ok = {k: v for k, v in ok.items() if k != "usage"}
        return await self._send(request, rec, 200, ok)

    async def _stream(
        self, request: web.Request, rec: RecordedRequest, answer: _Answer, gap: float, cut: bool
    ) -> web.StreamResponse:
        events: list[dict[str, Any] | str] = [answer.chunk({"role": "assistant", "content": ""})]
        events += answer.word_chunks()
        if cut:
            events = events[:3]  # role chunk + first two content chunks
        else:
            events.append(answer.chunk({}, answer.finish_reason))
            options = (rec.body or {}).get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True and rec.fault != "nousage":
                events.append({**answer.chunk_base, "choices": [], "usage": answer.usage})
            events.append("[DONE]")
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await resp.prepare(request)
        for i, event in enumerate(events):
            if i and gap and not await self._sleep(request, rec, gap):
                return resp
            if _gone(request):
                rec.gone()
                return resp
            data = event.encode() if isinstance(event, str) else _dumps(event)
            rec.completed = not cut and i == len(events) - 1  # optimistic, see _finish
            # One write per event so chunk boundaries reach the socket separately.
            await resp.write(b"data: " + data + b"\n\n")
        if cut:
            _abort(request)
            return resp
        await resp.write_eof()
        return resp

    async def _sleep(self, request: web.Request, rec: RecordedRequest, seconds: float) -> bool:
        """Sleep, but notice a vanished client; False means it went away."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if _gone(request):
                rec.gone()
                return False
            await asyncio.sleep(min(_POLL, left))
        return True

    async def _send(
        self,
        request: web.Request,
        rec: RecordedRequest,
        status: int,
        obj: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        resp = web.Response(status=status, body=_dumps(obj), headers=headers, content_type="application/json")
        return await self._finish(request, rec, resp)

    async def _finish(self, request: web.Request, rec: RecordedRequest, resp: web.Response) -> web.Response:
        # Set before the bytes leave: a client holding the whole response must never observe
        # completed=False (the server thread may resume after the client has moved on).
        rec.completed = True
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except BaseException:
            rec.completed = False
            raise
        return resp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI upstream in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args(argv)
    upstream = FakeUpstream(args.host, args.port, record=False).start()
    print(f"fake upstream listening on {upstream.base_url}", flush=True)
    done = threading.Event()
    # Explicit handlers: a backgrounded process (`... &` in a script) inherits SIGINT as ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.2):
        pass
    upstream.stop()


if __name__ == "__main__":
    main()
