"""LocalProvider: OpenAI chat completions from a GGUF model run in-process by llama.cpp, and the local media
models (embeddings, speech, transcription and translation: see `tasks`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from portway.providers.base import (
    BaseProvider,
    ChatCall,
    ChatStream,
    Completion,
    FailureKind,
    ProviderSettings,
    UpstreamFailure,
)
from portway.providers.listing import ListedModel
from portway.providers.local.generate import GenerationResult, Piece, run_generation
from portway.providers.local.model import LoadedModel, LocalOptions
from portway.providers.local.params import GenerationRequest, build_request
from portway.providers.local.pool import ModelPool
from portway.providers.local.shapes import ResponseShape
from portway.providers.local.stream import LocalChatStream, StreamItem, as_failure, queue_feeder
from portway.providers.local.tasks import MODEL_IDS, TASKS, LocalMedia
from portway.providers.local.toolcalls import CallDecoder
from portway.providers.media import MediaCall, MediaResult, Task

if TYPE_CHECKING:
    from portway.http.client import Transport


class LocalProvider(BaseProvider):
    """Serves one chat model id (`smollm2` unless `options.model_id` says otherwise) and the media models
    `all-minilm-l6-v2` (embeddings), `piper-joe` (speech) and `whisper-tiny.en` (transcription and
    translation); needs no API key.

    It answers with the id a client sends back to reach it, `<provider name>/<model id>` (`local/smollm2`),
    the id /v1/models lists: the bare model id names no target.
    """

    type_name = "local"
    uses_base_url = False
    needs_key = False
    free = True  # runs on this machine: no upstream bills it
    Options = LocalOptions
    tasks = frozenset({Task.CHAT, *TASKS})

    def __init__(self, settings: ProviderSettings, transport: Transport | None = None) -> None:
        super().__init__(settings, transport)  # no HTTP: the transport is not used
        self.config = LocalOptions.model_validate(settings.options)
        self.served_id = f"{settings.name}/{self.config.model_id}"
        self._pool = ModelPool(self.config)
        self._media = LocalMedia(settings.name, self.config.model_id)  # engines made on first use

    @property
    def busy(self) -> int:
        """Generations still running on a worker thread (a cancelled one counts until it has stopped)."""
        return self._pool.busy

    async def warm(self) -> None:
        """Loads the model now (in a worker thread) instead of on the first request."""
        await self._pool.warm()

    async def media(self, call: MediaCall) -> MediaResult:
        return await self._media.serve(call)

    async def list_models(self, key: str | None, timeout: float) -> list[ListedModel]:
        """Its own models, from its options: nothing to ask, nothing loaded. All of them cost nothing."""
        modalities = {
            Task.EMBEDDINGS: (("text",), ("embeddings",)),
            Task.SPEECH: (("text",), ("audio",)),
            Task.TRANSCRIPTION: (("audio",), ("text",)),
        }
        models = [ListedModel(self.config.model_id, context_length=self.config.n_ctx, free=True)]
        for task, (ins, outs) in modalities.items():
            models.append(ListedModel(MODEL_IDS[task], modalities_in=ins, modalities_out=outs, free=True))
        return models

    async def chat(self, call: ChatCall) -> Completion | ChatStream:
        if call.model in self._media.model_ids() and call.model != self.config.model_id:
            raise UpstreamFailure(
                FailureKind.BAD_REQUEST,
                f"{self.name}/{call.model} is not a chat model: chat with {self.served_id!r}",
                status=400,
                error_code="model_not_supported_for_endpoint",
                param="model",
            )
        if call.model != self.config.model_id:
            raise UpstreamFailure(
                FailureKind.BAD_REQUEST,
                f"the local provider does not serve model {call.model!r}: it serves {self.served_id!r}",
                status=404,
                error_code="model_not_found",
                param="model",
            )
        request = build_request(call.payload, self.config.max_tokens, logprobs=self.config.logprobs)
        timeout = call.timeout
        if self.settings.timeout is not None:
            timeout = min(timeout, self.settings.timeout)
        if call.stream:
            return await self._stream(request, timeout, call.idle_timeout)
        return await self._complete(request, timeout)

    async def aclose(self) -> None:
        await self._media.aclose()
        await self._pool.aclose()

    async def _complete(self, request: GenerationRequest, timeout: float) -> Completion:
        shape = ResponseShape.new(self.served_id)
        parts: list[str | Piece] = []
        cancel = threading.Event()
        try:
            async with asyncio.timeout(timeout):
                model = await self._pool.acquire()
                job = partial(run_generation, model, request, cancel, parts.append)
                result = await asyncio.shield(self._pool.start(model, cancel, job))
        except TimeoutError:
            cancel.set()
            raise _timed_out(timeout) from None
        except BaseException:
            cancel.set()
            raise
        if result.cancelled:
            raise UpstreamFailure(FailureKind.CONNECTION, "local provider is shutting down")
        if request.plan is None and request.top_logprobs is None:  # free text: the pieces are all str
            text = "".join(cast("list[str]", parts))
            body = shape.completion_body(text, result.finish_reason, result.usage)
        else:
            body = _structured_body(shape, request, parts, result)
        return Completion(body=body, usage=result.usage, served_model=self.served_id)

    async def _stream(self, request: GenerationRequest, timeout: float, idle_timeout: float) -> ChatStream:
        shape = ResponseShape.new(self.served_id, include_usage=request.include_usage)
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        feed = queue_feeder(asyncio.get_running_loop(), queue)
        cancel = threading.Event()
        try:
            async with asyncio.timeout(timeout):
                model = await self._pool.acquire()
                job = partial(_stream_job, model, request, cancel, feed)
                worker = self._pool.start(model, cancel, job)
                first = await queue.get()
        except TimeoutError:
            cancel.set()
            raise _timed_out(timeout) from None
        except BaseException:
            cancel.set()
            raise
        if isinstance(first, UpstreamFailure):
            raise first
        if isinstance(first, BaseException):
            raise as_failure(first) from first
        return LocalChatStream(
            shape=shape,
            first=first,
            queue=queue,
            cancel=cancel,
            worker=worker,
            idle_timeout=idle_timeout,
            decoder=_decoder(request),
        )


def _stream_job(
    model: LoadedModel,
    request: GenerationRequest,
    cancel: threading.Event,
    feed: Callable[[StreamItem], None],
) -> GenerationResult:
    """Worker-thread body of a stream: text pieces, then the result (or the exception) go to the queue."""
    try:
        result = run_generation(model, request, cancel, feed)
    except BaseException as exc:
        feed(exc)
        raise
    if result.cancelled:  # by the provider's aclose(); a closed stream's consumer no longer listens
        feed(UpstreamFailure(FailureKind.CONNECTION, "local provider is shutting down"))
    else:
        feed(result)
    return result


def _timed_out(timeout: float) -> UpstreamFailure:
    return UpstreamFailure(FailureKind.TIMEOUT, f"the local model did not answer within {timeout:g}s")


def _decoder(request: GenerationRequest) -> CallDecoder | None:
    """A reader of tool calls when the answer may be one."""
    return CallDecoder(request.plan) if request.plan is not None and request.plan.tools else None


def _structured_body(
    shape: ResponseShape, request: GenerationRequest, parts: list[str | Piece], result: GenerationResult
) -> bytes:
    """The completion of an answer that may be a tool call or carry logprobs, read as a stream would be."""
    texts = [part if isinstance(part, str) else part.text for part in parts]
    logprobs = None
    if request.top_logprobs is not None:
        logprobs = [entry for part in parts if isinstance(part, Piece) for entry in part.logprobs]
    decoder = _decoder(request)
    if decoder is None:
        return shape.completion_body("".join(texts), result.finish_reason, result.usage, logprobs=logprobs)
    decoder.feed("".join(texts))
    _, finish_reason = decoder.finish(result.finish_reason)
    calls = None
    if decoder.is_call:
        function = {"name": decoder.name, "arguments": decoder.arguments}
        calls = [{"id": decoder.id, "type": "function", "function": function}]
    return shape.completion_body(decoder.content, finish_reason, result.usage, tool_calls=calls)
