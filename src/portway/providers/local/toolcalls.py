"""Reading a grammar-constrained answer as it is generated: text, or a tool call streamed as OpenAI deltas.

The grammar (grammar.py) makes the model write a call as `{"name": "<tool>", "arguments": <object>}`,
after the label `call: ` when it may also answer (`auto`), and an answer after the label `message: `. The
label decides which it is; it is dropped, and so are the whitespace after it. Once `"arguments":` has been
read the name is known: the call's first delta (id, type, name) goes out then, and the arguments follow
piece by piece as the model writes them. Only a run of closing braces and whitespace is held back, since the
last `}` closes the wrapper object, not the arguments. At most one call per turn (`parallel_tool_calls` is
satisfied by never making more).
"""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

import orjson

from portway.providers.local.structured import CALL_LABEL, MESSAGE_LABEL, OutputPlan

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_HELD = re.compile(r"[\s}]*\Z")
_ID_CHARS = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


class CallDecoder:
    """Feed it the answer's text pieces; it returns chat deltas (`{"content": ...}` or `{"tool_calls": ...}`).

    After `finish()`, `content`, `name`, `arguments` and `id` describe the whole answer (the completion body
    is built from them, so a non-stream answer is exactly the join of a stream's deltas).
    """

    def __init__(self, plan: OutputPlan) -> None:
        self._names = plan.tool_names
        self._state = "head" if plan.must_call else "label"
        self._buffer = ""  # text not yet handed on
        self.content: str | None = None
        self.id = call_id()
        self.name: str | None = None
        self.arguments = ""

    @property
    def is_call(self) -> bool:
        return self.name is not None

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self._buffer += piece
        if self._state == "label":
            for label, state in ((CALL_LABEL, "head"), (MESSAGE_LABEL, "text")):
                if self._buffer.startswith(label):
                    self._buffer, self._state = self._buffer[len(label) :], state
                    break
            else:
                return []
        if self._state == "text":
            return self._text()
        if self._state == "head":
            match = _HEAD.match(self._buffer)
            if match is None or match.group(1) not in self._names:
                return []
            self.name = match.group(1)
            self._buffer = self._buffer[match.end() :]
            self._state = "arguments"
            return [self._head(), *self._pieces(final=False)]
        return self._pieces(final=False)

    def finish(self, finish_reason: str) -> tuple[list[dict[str, Any]], str]:
        """The last deltas and the finish_reason to report (`tool_calls` when a whole call was made)."""
        if self._state == "text":
            return self._text(), finish_reason
        if self._state != "arguments":  # cut (max_tokens) before the label or the name was complete
            self._buffer = ""
            return [], finish_reason
        complete = finish_reason == "stop" or _is_whole_call(self.arguments + self._buffer)
        deltas = self._pieces(final=True, complete=complete)
        return deltas, "tool_calls" if complete else finish_reason

    def _text(self) -> list[dict[str, Any]]:
        piece, self._buffer = self._buffer, ""
        if self.content is None:
            piece = piece.lstrip()  # after the label
        if not piece:
            return []
        self.content = (self.content or "") + piece
        return [{"content": piece}]

    def _head(self) -> dict[str, Any]:
        call = {
            "index": 0,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": ""},
        }
        return {"tool_calls": [call]}

    def _pieces(self, *, final: bool, complete: bool = False) -> list[dict[str, Any]]:
        if final:
            piece = self._buffer.rstrip()
            if complete and piece.endswith("}"):
                piece = piece[:-1].rstrip()  # the wrapper's closing brace
            self._buffer = ""
        else:
            held = _HELD.search(self._buffer)
            cut = held.start() if held is not None else len(self._buffer)
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
        if not piece:
            return []
        self.arguments += piece
        return [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}]


def _is_whole_call(text: str) -> bool:
    """Whether `arguments` + held text is a complete arguments object plus the wrapper's `}`."""
    stripped = text.rstrip()
    if not stripped.endswith("}"):
        return False
    try:
        orjson.loads(stripped[:-1])
    except orjson.JSONDecodeError:
        return False
    return True
