"""The local model's ChatStream: a worker thread generates, the event loop encodes SSE events.

The worker hands each item (a piece of text, then the GenerationResult or an exception) to the loop
through an asyncio.Queue via `loop.call_soon_threadsafe`. Closing the stream, or abandoning the
iteration (generator closed, task cancelled), sets the worker's cancel flag; the worker stops before
the next token and only then gives its model instance back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Final, TypeAlias

from portway.providers.base import FailureKind, UpstreamFailure, Usage
from portway.providers.local.generate import GenerationResult, Piece
from portway.providers.local.shapes import ResponseShape
from portway.providers.local.toolcalls import CallDecoder
from portway.providers.sse import DONE_EVENT, encode_event

StreamItem: TypeAlias = str | Piece | GenerationResult | BaseException | None  # None: closed, wake up
CLOSE_WAIT: Final = 2.0  # seconds aclose() waits for the worker to stop (it checks every token)


def queue_feeder(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[StreamItem]
) -> Callable[[StreamItem], None]:
    """A thread-safe `put` for the worker; a no-op once the loop is gone (shutdown)."""

    def feed(item: StreamItem) -> None:
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            loop.call_soon_threadsafe(queue.put_nowait, item)

    return feed


def as_failure(item: BaseException) -> UpstreamFailure:
    if isinstance(item, UpstreamFailure):
        return item
    return UpstreamFailure(FailureKind.SERVER, f"local model failed ({type(item).__name__})", status=500)


class LocalChatStream:
    """Complete SSE events: role chunk, content (or tool-call) chunks, finish chunk, [usage chunk], [DONE]."""

    def __init__(
        self,
        *,
        shape: ResponseShape,
        first: StreamItem,
        queue: asyncio.Queue[StreamItem],
        cancel: threading.Event,
        worker: asyncio.Future[GenerationResult],
        idle_timeout: float,
        decoder: CallDecoder | None = None,
    ) -> None:
        self.usage: Usage | None = None
        self.served_model = shape.model
        self._shape = shape
        self._first = first
        self._queue = queue
        self._cancel = cancel
        self._worker = worker
        self._idle_timeout = idle_timeout
        self._decoder = decoder  # when the answer may be a tool call
        self._closed = False
        self._events = self._generate()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        """Stops generation and waits (briefly) until the worker has let go of the model."""
        if not self._closed:
            self._closed = True
            self._cancel.set()
            self._queue.put_nowait(None)  # wakes a consumer blocked on the queue
            with contextlib.suppress(RuntimeError):  # "already running": it will see _closed and end
                await self._events.aclose()
        with contextlib.suppress(Exception):  # timeout or the worker's own failure; never CancelledError
            await asyncio.wait_for(asyncio.shield(self._worker), CLOSE_WAIT)
        if self.usage is None and self._worker.done() and not self._worker.cancelled():
            result = self._worker.result() if self._worker.exception() is None else None
            self.usage = result.usage if result is not None else None

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        shape, decoder = self._shape, self._decoder
        try:
            yield encode_event(shape.role_chunk("" if decoder is None else None))
            item = self._first
            self._first = None
            while not self._closed:
                if isinstance(item, str):
                    if decoder is None:
                        yield encode_event(shape.content_chunk(item))
                    else:
                        for delta in decoder.feed(item):
                            yield encode_event(shape.delta_chunk(delta))
                elif isinstance(item, Piece):  # logprobs asked for (never with tools)
                    yield encode_event(shape.logprobs_chunk(item.text, item.logprobs))
                elif isinstance(item, GenerationResult):
                    self.usage = item.usage
                    finish_reason = item.finish_reason
                    if decoder is not None:
                        deltas, finish_reason = decoder.finish(finish_reason)
                        for delta in deltas:
                            yield encode_event(shape.delta_chunk(delta))
                    yield encode_event(shape.finish_chunk(finish_reason))
                    if shape.include_usage:
                        yield encode_event(shape.usage_chunk(item.usage))
                    yield DONE_EVENT
                    return
                elif isinstance(item, UpstreamFailure):
                    raise item
                elif isinstance(item, BaseException):
                    raise as_failure(item) from item
                item = await self._next()
        finally:
            self._cancel.set()  # consumer gone, closed or failed: stop generating

    async def _next(self) -> StreamItem:
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await self._queue.get()
        except TimeoutError:
            raise UpstreamFailure(
                FailureKind.TIMEOUT, f"local model produced nothing for {self._idle_timeout:g}s"
            ) from None
