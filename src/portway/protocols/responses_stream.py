"""OpenAI's Responses API streams from chat completion streams: a stateful translator fed chunk by chunk.

Pure (no I/O), like protocols/responses.py, whose request and Response shapes it shares. The events and
their fields are those of OpenAI's Responses streaming reference (and the openai SDK's types):
`response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta` / `.done` (`response.refusal.*` for a refusal), `response.content_part.done`,
`response.function_call_arguments.delta` / `.done`, `response.output_item.done`, then
`response.completed` (or `response.incomplete`, or `error` + `response.failed`), each with its
`sequence_number`.
"""

from __future__ import annotations

from typing import Any

import orjson

from portway.protocols.responses import (
    INCOMPLETE,
    IdMaker,
    ResponsesRequest,
    as_dict,
    content_text,
    finish,
    new_id,
    skeleton,
    text_part,
    usage,
)
from portway.providers.sse import event_data

# A message's content part kinds: the field holding its text, and its events' name.
_PART = {"output_text": ("text", "output_text"), "refusal": ("refusal", "refusal")}


def encode(event: dict[str, Any]) -> bytes:
    """One Responses event as SSE: the `event:` line names its type, as OpenAI's stream does."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class StreamTranslator:
    """Chat chunks (whole SSE events) in, Responses events out, with sequence numbers.

    Fed every event of the chat stream (`feed`), then `close()` once it ended: open items are finished at
    the chat finish reason and the terminal event (`response.completed`, or `response.incomplete`) comes
    at the end, after the usage chunk. A chat error event (a stream broken mid-way) becomes an `error`
    event and `response.failed`. Tool calls stay open until the finish reason, so arguments of parallel
    calls may arrive interleaved; a call is keyed by its chat `index`, and a new `id` at a known index
    (upstreams that number every call 0) starts a new call. `response` is the Response as streamed so far.
    """

    def __init__(self, req: ResponsesRequest, ids: IdMaker = new_id) -> None:
        self.req = req
        self.ids = ids
        self.response = skeleton(req, req.model, "in_progress")
        self.seq = 0
        self.started = False
        self.ended = False  # a terminal event was sent
        self.finish_reason: str | None = None
        self.usage_seen = False
        self._message: dict[str, Any] | None = None  # the open message item
        self._part: dict[str, Any] | None = None  # its open content part
        self._calls: dict[int, dict[str, Any]] = {}  # open function_call items by chat index
        self._open_calls: list[dict[str, Any]] = []
        self._where: dict[str, int] = {}  # output index by item id

    # -- events out

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        out.append(encode({"type": kind, **fields, "sequence_number": self.seq}))
        self.seq += 1

    def _add(self, out: list[bytes], item: dict[str, Any]) -> None:
        self._where[item["id"]] = len(self.response["output"])
        self.response["output"].append(item)
        self._emit(out, "response.output_item.added", output_index=self._index(item), item=item)

    def _index(self, item: dict[str, Any]) -> int:
        return self._where[item["id"]]

    # -- chat events in

    def feed(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if data is None or data == b"[DONE]" or self.ended:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        out: list[bytes] = []
        if not self.started:
            self._start(out, chunk)
        if isinstance(chunk.get("error"), dict):
            self._fail(out, chunk["error"])
            return out
        if chunk.get("usage") is not None:
            self.response["usage"] = usage(chunk["usage"])
            self.usage_seen = True
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(out, choice)
        return out

    def _start(self, out: list[bytes], chunk: dict[str, Any]) -> None:
        self.started = True
        if isinstance(chunk.get("model"), str):
            self.response["model"] = chunk["model"]
        self._emit(out, "response.created", response=self.response)
        self._emit(out, "response.in_progress", response=self.response)

    def _choice(self, out: list[bytes], choice: dict[str, Any]) -> None:
        delta = as_dict(choice.get("delta"))
        text = content_text(delta.get("content"))
        if text:
            self._text(out, "output_text", text)
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            self._text(out, "refusal", delta["refusal"])
        for position, call in enumerate(delta.get("tool_calls") or ()):
            if isinstance(call, dict):
                self._tool_call(out, position, call)
        reason = choice.get("finish_reason")
        if reason is not None:
            self.finish_reason = reason
            self._close_items(out, "incomplete" if reason in INCOMPLETE else "completed")

    def _text(self, out: list[bytes], kind: str, text: str) -> None:
        message = self._message
        if message is None:
            message = self._message = {
                "id": self.ids("msg"),
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
            }
            self._add(out, message)
        part = self._part
        if part is not None and part["type"] != kind:
            self._close_part(out)
            part = None
        name, events = _PART[kind]
        where = {"item_id": message["id"], "output_index": self._index(message)}
        if part is None:
            part = self._part = text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            message["content"].append(part)
            self._emit(
                out,
                "response.content_part.added",
                **where,
                content_index=len(message["content"]) - 1,
                part=part,
            )
        part[name] += text
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        self._emit(
            out,
            f"response.{events}.delta",
            **where,
            content_index=len(message["content"]) - 1,
            delta=text,
            **extra,
        )

    def _close_part(self, out: list[bytes]) -> None:
        message, part = self._message, self._part
        if message is None or part is None:
            return
        name, events = _PART[part["type"]]
        where = {"item_id": message["id"], "output_index": self._index(message)}
        index = message["content"].index(part)
        extra: dict[str, Any] = {"logprobs": []} if part["type"] == "output_text" else {}
        self._emit(
            out, f"response.{events}.done", **where, content_index=index, **{name: part[name]}, **extra
        )
        self._emit(out, "response.content_part.done", **where, content_index=index, part=part)
        self._part = None

    def _close_message(self, out: list[bytes], status: str) -> None:
        message = self._message
        if message is None:
            return
        self._close_part(out)
        message["status"] = status
        self._emit(out, "response.output_item.done", output_index=self._index(message), item=message)
        self._message = None

    def _tool_call(self, out: list[bytes], position: int, delta: dict[str, Any]) -> None:
        raw_index = delta.get("index")
        index = raw_index if isinstance(raw_index, int) else position
        function = as_dict(delta.get("function"))
        call_id, name = delta.get("id"), function.get("name")
        call = self._calls.get(index)
        if call is None or (isinstance(call_id, str) and call_id and call_id != call["call_id"]):
            self._close_message(out, "completed")  # the text before the calls is finished
            call = {
                "id": self.ids("fc"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call_id if isinstance(call_id, str) and call_id else self.ids("call"),
                "name": name if isinstance(name, str) else "",
            }
            self._calls[index] = call
            self._open_calls.append(call)
            self._add(out, call)
        elif isinstance(name, str) and name and not call["name"]:
            call["name"] = name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call["arguments"] += arguments
            self._emit(
                out,
                "response.function_call_arguments.delta",
                item_id=call["id"],
                output_index=self._index(call),
                delta=arguments,
            )

    def _close_items(self, out: list[bytes], status: str) -> None:
        self._close_message(out, status)
        for call in self._open_calls:
            where = {"item_id": call["id"], "output_index": self._index(call)}
            self._emit(out, "response.function_call_arguments.done", **where, arguments=call["arguments"])
            call["status"] = "completed"
            self._emit(out, "response.output_item.done", output_index=where["output_index"], item=call)
        self._open_calls.clear()
        self._calls.clear()

    def _fail(self, out: list[bytes], error: dict[str, Any]) -> None:
        """A broken stream: OpenAI's `error` event (flat fields as documented, and the nested `error`
        object its servers send, which makes the openai SDK raise APIError), then `response.failed`."""
        message = error.get("message") if isinstance(error.get("message"), str) else "stream interrupted"
        code = error.get("code") if isinstance(error.get("code"), str) else "server_error"
        nested = {
            "type": error.get("type") or "server_error",
            "code": code,
            "message": message,
            "param": None,
        }
        self._emit(out, "error", code=code, message=message, param=None, error=nested)
        for item in self.response["output"]:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        self.response["status"] = "failed"
        self.response["error"] = {"code": "server_error", "message": message}
        self._emit(out, "response.failed", response=self.response)
        self.ended = True

    def close(self, completed_at: int | None = None) -> list[bytes]:
        """The chat stream ended: finish open items and send the terminal event (nothing after a failure)."""
        out: list[bytes] = []
        if self.ended:
            return out
        if not self.started:
            self._start(out, {})
        if self.finish_reason is None:
            self._close_items(out, "completed")
        finish(self.response, self.finish_reason, completed_at)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        self._emit(out, kind, response=self.response)
        self.ended = True
        return out
