"""Server-sent events: splitting an upstream byte stream into whole events, and encoding our own."""

from __future__ import annotations

from typing import Any

import orjson

DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(message: str, type_: str, code: str) -> bytes:
    """OpenAI's error shape as an SSE event: the openai SDK raises APIError when it reads one."""
    return encode_event({"error": {"message": message, "type": type_, "code": code, "param": None}})


class EventTooLarge(Exception):
    """An upstream event grew past the cap without ending (an event that never ends, or no SSE at all)."""


class EventSplitter:
    """Feeds raw chunks in, gets whole events out (each with its blank-line terminator kept).

    Events are forwarded as soon as their terminator arrives, so nothing is held back longer than it
    takes the upstream to finish the event it is writing. Accepts \\n\\n and \\r\\n\\r\\n terminators.
    An unfinished event is kept as a list of its chunks, joined once when it ends, so a long event costs
    linear time (concatenating on every chunk was quadratic); past `max_event_bytes` feed raises
    EventTooLarge.
    """

    __slots__ = ("_max", "_parts", "_pending", "_tail")

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._max = max_event_bytes
        self._parts: list[bytes] = []
        self._pending = 0
        self._tail = b""  # the pending event's last 3 bytes: where a terminator split across reads starts

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._parts:
            # Only a terminator that ends inside this chunk can finish the pending event (the pending
            # bytes hold none): look at the seam, then the chunk, before joining anything.
            seam = self._tail + chunk[:3]
            if not (b"\n\n" in seam or b"\r\n\r\n" in seam or b"\n\n" in chunk or b"\r\n\r\n" in chunk):
                self._pending += len(chunk)
                if self._pending > self._max:
                    raise EventTooLarge(f"an upstream event grew past {self._max} bytes")
                self._parts.append(chunk)
                self._tail = seam[-3:] if len(chunk) < 3 else chunk[-3:]
                return []
            self._parts.append(chunk)
            buf = b"".join(self._parts)
            self._parts = []
        else:
            buf = chunk
        return self._split(buf)

    def _split(self, buf: bytes) -> list[bytes]:
        events: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            crlf = buf.find(b"\r\n\r\n", start)
            if crlf != -1 and (end == -1 or crlf < end):
                cut = crlf + 4
            elif end != -1:
                cut = end + 2
            else:
                break
            if cut - start > self._max:
                raise EventTooLarge(f"an upstream event is larger than {self._max} bytes")
            events.append(buf[start:cut])
            start = cut
        rest = len(buf) - start
        if rest > self._max:
            raise EventTooLarge(f"an upstream event grew past {self._max} bytes")
        self._pending = rest
        if rest:
            self._parts.append(buf[start:] if start else buf)
            self._tail = buf[-3:]
        return events

    @property
    def pending_bytes(self) -> int:
        """Bytes of the event still waiting for its end."""
        return self._pending


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's `data:` line(s), or None for comments / keep-alives."""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    return b"\n".join(data) if data else None
