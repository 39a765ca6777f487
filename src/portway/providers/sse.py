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


class EventSplitter:
    """Feeds raw chunks in, gets whole events out (each with its blank-line terminator kept).

    Events are forwarded as soon as their terminator arrives, so nothing is held back longer than it
    takes the upstream to finish the event it is writing. Accepts \\n\\n and \\r\\n\\r\\n terminators.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
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
            events.append(buf[start:cut])
            start = cut
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        return self._buf


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's `data:` line(s), or None for comments / keep-alives."""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    return b"\n".join(data) if data else None
