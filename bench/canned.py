"""The canned upstream answers nginx serves: one chat completion and one paced SSE stream.

The stream is role chunk + CONTENT_CHUNKS content chunks + finish chunk + usage chunk + `data: [DONE]`, with
`echo_sleep` of GAP_SECONDS between events, so a client can count events and time the gaps between them.
"""

from __future__ import annotations

import json

MODEL = "canned-model"
CREATED = 1700000000
CONTENT_CHUNKS = 36
GAP_SECONDS = 0.02
SLOW_SECONDS = 1.0  # the overload scenario's upstream: holds each admitted request this long
PROMPT_TOKENS = 12
USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CONTENT_CHUNKS, "total_tokens": 48}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def completion() -> str:
    return _dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! This is a canned benchmark answer."},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    )


def _chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def stream_events() -> list[str]:
    """Each SSE event's full text, blank-line terminator included."""
    objs: list[dict[str, object]] = [_chunk({"role": "assistant", "content": ""})]
    objs += [_chunk({"content": f" tok{i}"}) for i in range(CONTENT_CHUNKS)]
    objs.append(_chunk({}, "stop"))
    usage_chunk = {k: v for k, v in _chunk({}).items() if k != "choices"}
    objs.append({**usage_chunk, "choices": [], "usage": USAGE})
    return [f"data: {_dumps(o)}\n\n" for o in objs] + ["data: [DONE]\n\n"]


def request_body(model: str, *, stream: bool = False) -> str:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 64,
    }
    if stream:
        # Ask for usage ourselves: portway then keeps the usage chunk, so every target sends the same events.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return _dumps(body)


def nginx_quote(text: str) -> str:
    """A single-quoted nginx string (the config parser turns \\n back into a newline)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def stream_directives(indent: str = "            ") -> str:
    """echo-module directives that write each event, flush it, and pause before the next."""
    lines: list[str] = []
    events = stream_events()
    for i, event in enumerate(events):
        lines.append(f"echo -n {nginx_quote(event)};")
        lines.append("echo_flush;")
        if i < len(events) - 1:
            lines.append(f"echo_sleep {GAP_SECONDS};")
    return "\n".join(indent + line for line in lines)
