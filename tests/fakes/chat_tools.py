"""Tool calls for the fake upstream's chat completions: deterministic, a function of the request body only.

- A request with `tools` (and `tool_choice` other than "none") whose last message is the user's is answered
  with tool calls: one per tool (at most 3: parallel calls), or only the named one (`tool_choice`
  {"type": "function", "function": {"name"}}) or only the first (`parallel_tool_calls: false`), with
  `finish_reason: "tool_calls"`. Each call's arguments are built from its JSON schema (see `arguments_for`).
  Streamed, a call's first chunk carries its id, name and empty arguments, then the arguments follow in
  pieces of PIECE characters, so a client (or a translator) has to join them; usage counts one completion
  token per piece.
- A request whose last message is a tool result is answered "Tool said: <the results' text>", which proves
  the results reached the upstream.
- Anything else: None (the usual echo answer).

Call `tool_answer(body)` from the fake's chat handler (tests/fakes/upstream.py does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.upstream import _Answer, _text, build_answer

PIECE = 7  # characters of arguments per streamed chunk
MAX_CALLS = 3


def _value(schema: Any, text: str) -> Any:
    """A value that fits the (simple) JSON schema: enums take their first value, strings the user's text."""
    if not isinstance(schema, dict):
        return text
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if kind == "integer":
        return 3
    if kind == "number":
        return 2.5
    if kind == "boolean":
        return True
    if kind == "array":
        return [_value(schema.get("items"), text)]
    if kind == "object":
        props = schema.get("properties")
        return {k: _value(v, text) for k, v in props.items()} if isinstance(props, dict) else {}
    return text


def arguments_for(parameters: Any, text: str) -> str:
    """The arguments string for a function with these parameters, given the user's last text."""
    args = _value(parameters if isinstance(parameters, dict) else {"type": "object"}, text)
    return json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False, separators=(",", ":"))


def pieces(arguments: str) -> list[str]:
    return [arguments[i : i + PIECE] for i in range(0, len(arguments), PIECE)] or [""]


@dataclass
class ToolAnswer(_Answer):
    calls: list[dict[str, str]] = field(default_factory=list)  # {"id", "name", "arguments"}

    @property
    def usage(self) -> dict[str, int]:
        done = sum(len(pieces(c["arguments"])) for c in self.calls)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }

    def tool_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in self.calls
        ]

    def completion(self) -> dict[str, Any]:
        body = super().completion()
        body["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "tool_calls": self.tool_calls(),
        }
        body["usage"] = self.usage
        return body

    def word_chunks(self) -> list[dict[str, Any]]:
        """The streamed chunks of the calls (the fake's stream sends these between role and finish)."""
        chunks: list[dict[str, Any]] = []
        for i, call in enumerate(self.calls):
            head = {"index": i, "id": call["id"], "type": "function"}
            chunks.append(
                self.chunk({"tool_calls": [{**head, "function": {"name": call["name"], "arguments": ""}}]})
            )
            for piece in pieces(call["arguments"]):
                chunks.append(self.chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        return chunks


def _chosen(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = [
        t["function"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if choice == "none" or not tools:
        return []
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = [t for t in tools if t.get("name") == choice["function"].get("name")]
        return named[:1]
    return tools[:1] if body.get("parallel_tool_calls") is False else tools[:MAX_CALLS]


def tool_answer(body: dict[str, Any]) -> _Answer | None:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    if not messages:
        return None
    base = build_answer(body)
    if messages[-1].get("role") == "tool":
        results: list[str] = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            results.insert(0, _text(m.get("content")))
        base.words = ("Tool said: " + " ".join(results)).split()
        return base
    if messages[-1].get("role") != "user":
        return None
    tools = _chosen(body)
    if not tools:
        return None
    text = _text(messages[-1].get("content"))
    digest = base.id.removeprefix("chatcmpl-")
    calls = [
        {
            "id": f"call_{digest[:8]}_{i}",
            "name": str(t.get("name", "")),
            "arguments": arguments_for(t.get("parameters"), text),
        }
        for i, t in enumerate(tools)
    ]
    return ToolAnswer(base.id, base.model, [], "tool_calls", base.prompt_tokens, calls=calls)
