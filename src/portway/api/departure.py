"""Who is still listening: a request's task is cancelled when its client goes away while it is answered,
and an event stream is sent until it ends or the client leaves. Shared by the chat route and the media
routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

_END = {"type": "http.response.body", "body": b"", "more_body": False}


class Departure:
    """Cancels the request's task when its client goes away while the request is being answered.

    Armed once the body is read, for the whole answer: a non-stream request waiting for its upstream as
    much as a stream being relayed (cancelling closes the upstream connection and frees the request's and
    the key's in-flight slots). portway's own server calls back on a disconnect (the `portway.on_disconnect`
    extension: no task on the hot path); under any other ASGI server a task waits on `receive()` for it.
    """

    __slots__ = ("armed", "gone", "task", "watcher")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.armed = False
        self.gone = False  # the client left, and the task was cancelled for it
        self.watcher: asyncio.Task[None] | None = None

    def arm(self, scope: Scope, receive: Receive) -> None:
        self.armed = True
        extensions = scope.get("extensions")
        on_disconnect = extensions.get("portway.on_disconnect") if extensions else None
        if on_disconnect is not None:
            on_disconnect(self.leave)
        else:
            self.watcher = asyncio.create_task(self._watch(receive))

    def disarm(self) -> None:
        """From here on a disconnect cancels nothing (the answer is being sent, or was)."""
        self.armed = False
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None

    def leave(self) -> None:
        if self.armed and not self.gone:
            self.gone = True
            self.task.cancel()

    def forgive(self) -> bool:
        """After a CancelledError: True (and the cancellation undone) if it was ours: the client left."""
        self.disarm()
        if self.gone:
            self.task.uncancel()
        return self.gone

    async def _watch(self, receive: Receive) -> None:
        message: Message = {"type": ""}
        while message["type"] != "http.disconnect":
            message = await receive()
        self.leave()


async def stream_events(
    events: AsyncGenerator[bytes, None], send: Send, headers: list[Any], departure: Departure
) -> None:
    """Send events as they come; a client disconnect cancels the pump (and with it the upstream call)."""
    try:
        # The first event is pulled before anything is sent: once the relay has started, its clean-up
        # (record, settle, key release) runs however the pump ends; an unstarted generator would skip it.
        first = await anext(events, None)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if first is not None:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send(_END)
    except asyncio.CancelledError:
        if not departure.forgive():
            raise
    finally:
        departure.disarm()
        await events.aclose()


SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer a stream
]


class EventStream(Response):
    """A streamed answer for a FastAPI route (server-sent events by default, or any `head`, e.g. speech
    audio), sent as it is produced; a disconnect cancels the producer (and with it the upstream call)."""

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        departure: Departure,
        head: list[tuple[bytes, bytes]] = SSE_HEADERS,
    ) -> None:
        super().__init__(status_code=200)
        self.events = events
        self.departure = departure
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.head = [*head, *extra]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await stream_events(self.events, send, self.head, self.departure)
