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
from portway.providers.local.generate import GenerationResult
from portway.providers.local.shapes import ResponseShape
from portway.providers.sse import DONE_EVENT, encode_event

StreamItem: TypeAlias = str | GenerationResult | BaseException | None  # None: closed, wake up
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
    """Complete SSE events: role chunk, content chunks, finish chunk, [usage chunk], [DONE]."""

    def __init__(
        self,
        *,
        shape: ResponseShape,
        first: StreamItem,
        queue: asyncio.Queue[StreamItem],
        cancel: threading.Event,
        worker: asyncio.Future[GenerationResult],
        idle_timeout: float,
    ) -> None:
        self.usage: Usage | None = None
        self.served_model = shape.model
        self._shape = shape
        self._first = first
        self._queue = queue
        self._cancel = cancel
        self._worker = worker
        self._idle_timeout = idle_timeout
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
        shape = self._shape
        try:
            yield encode_event(shape.role_chunk())
            item = self._first
            self._first = None
            while not self._closed:
                if isinstance(item, str):
                    yield encode_event(shape.content_chunk(item))
                elif isinstance(item, GenerationResult):
                    self.usage = item.usage
                    yield encode_event(shape.finish_chunk(item.finish_reason))
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
