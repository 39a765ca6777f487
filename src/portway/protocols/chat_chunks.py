"""Chat completions between their two shapes: a stream's chunks assembled into one `chat.completion`, and a
completion replayed as `chat.completion.chunk` events. Pure functions, no IO.

The response cache keeps one form of every answer (the completion JSON) whichever way it was asked for,
so a streamed answer can serve a later non-stream request of the same prompt and the other way round.
"""

from __future__ import annotations

from typing import Any

import orjson

from portway.providers.sse import DONE_EVENT, encode_event, event_data

_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", len(calls))
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


class _Choice:
    __slots__ = ("calls", "finish", "role", "texts")

    def __init__(self) -> None:
        self.role = "assistant"
        self.texts: dict[str, list[str]] = {}
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None

    def feed(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            self.role = delta["role"]
        for name in _TEXT_FIELDS:
            text = delta.get(name)
            if isinstance(text, str) and text:
                self.texts.setdefault(name, []).append(text)
        for call in delta.get("tool_calls") or ():
            _merge_tool_call(self.calls, call)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": self.role, "content": "".join(self.texts.get("content", ())) or None}
        for name in _TEXT_FIELDS[1:]:
            if name in self.texts:
                msg[name] = "".join(self.texts[name])
        if self.calls:
            msg["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return msg


def assemble(events: list[bytes]) -> dict[str, Any] | None:
    """The completion a whole stream amounts to; None when the stream is not a complete answer (an error
    event, a choice without a finish_reason, no choices, or an event that is not JSON)."""
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage: Any = None
    for event in events:
        data = event_data(event)
        if data is None or data == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        if not head:
            head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        for choice in chunk.get("choices") or ():
            choices.setdefault(int(choice.get("index", 0)), _Choice()).feed(choice)
        if chunk.get("usage"):
            usage = chunk["usage"]
    if not choices or any(c.finish is None for c in choices.values()):
        return None
    out: dict[str, Any] = {"id": head.get("id"), "object": "chat.completion", **head}
    out["choices"] = [
        {"index": i, "message": choices[i].message(), "finish_reason": choices[i].finish}
        for i in sorted(choices)
    ]
    if usage is not None:
        out["usage"] = usage
    return out


def complete(completion: dict[str, Any]) -> bool:
    """Whether a completion is a whole answer worth keeping: choices, each with a finish_reason."""
    choices = completion.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    )


def replay(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """SSE events a client would have streamed for `completion`: per choice its whole message as one delta,
    then its finish_reason; the usage chunk when the client asked for it (`stream_options.include_usage`);
    then `data: [DONE]`."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint"):
        head["system_fingerprint"] = completion["system_fingerprint"]
    events: list[bytes] = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(delta["tool_calls"])]
        first = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        events.append(encode_event({**head, "choices": [first]}))
        last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
        events.append(encode_event({**head, "choices": [last]}))
    if include_usage and completion.get("usage"):
        events.append(encode_event({**head, "choices": [], "usage": completion["usage"]}))
    events.append(DONE_EVENT)
    return events
