"""OpenAI's legacy text completions (`POST /v1/completions`) as chat completions, and back. Pure: no I/O.

A completions request becomes a chat request with the prompt as one user message, so it is served by the
same chat service (aliases, fallbacks, limits, usage and cost) as every other protocol. What has no chat
equivalent is refused with a 400 naming the field rather than silently ignored:

- `prompt` as a list of several prompts (one answer object would have to interleave n x prompts choices
  from separate upstream calls; a client sends one request per prompt instead), or as token arrays
  (portway does not tokenize for the upstream);
- `suffix` (insertion), `echo: true`, `logprobs`, `best_of` other than `n`;
- chat-only fields (`messages`, `tools`, `functions`, `tool_choice`, `function_call`).

A prompt list of exactly one string is served as that string. `max_tokens` defaults to 16, as it does on
OpenAI's endpoint (chat completions have no such default). Every other field (temperature, top_p, n, stop,
stream, stream_options, seed, user, presence/frequency penalties, logit_bias, and any newer or
upstream-specific one) is passed on as chat passes unknown fields on.
"""

from __future__ import annotations

from typing import Any

import orjson

from portway.errors import UnsupportedParameter, ValidationError
from portway.providers.sse import DONE_EVENT, encode_event, event_data

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
# Fields of the completions API that are translated (prompt) or refused here, never passed on as they are.
_LEGACY_FIELDS = frozenset({"prompt", "suffix", "echo", "logprobs", "best_of"})
_CHAT_ONLY = ("messages", "tools", "functions", "tool_choice", "function_call")
_FINISH = frozenset({"stop", "length", "content_filter"})  # the finish reasons a text_completion has


# -- request ---------------------------------------------------------------------------------------------


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request that serves this completions request (ValidationError / UnsupportedParameter)."""
    prompt = _prompt(body.get("prompt"))
    _refuse_unsupported(body)
    chat = {k: v for k, v in body.items() if k not in _LEGACY_FIELDS}
    chat["messages"] = [{"role": "user", "content": prompt}]
    if chat.get("max_tokens") is None:
        chat["max_tokens"] = DEFAULT_MAX_TOKENS
    return chat


def _prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise ValidationError("'prompt' is required: the text to complete", param="prompt")
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        if len(value) == 1:
            only: str = value[0]
            return only
        raise UnsupportedParameter(
            f"'prompt' holds {len(value)} prompts; portway serves one prompt per request "
            "(send one request for each prompt; `n` asks for several completions of one prompt)",
            param="prompt",
        )
    if isinstance(value, list) and value and all(_is_token(p) or _is_tokens(p) for p in value):
        raise UnsupportedParameter(
            "'prompt' as token ids is not supported: send the prompt as text", param="prompt"
        )
    raise ValidationError("'prompt' must be a string or an array of one string", param="prompt")


def _is_token(value: Any) -> bool:
    return type(value) is int


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(type(t) is int for t in value)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise ValidationError("'suffix' must be a string", param="suffix")
    if suffix:
        raise UnsupportedParameter("'suffix' (text insertion) is not supported", param="suffix")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise ValidationError("'echo' must be a boolean", param="echo")
    if echo:
        raise UnsupportedParameter(
            "'echo: true' is not supported: the answer holds the completion only", param="echo"
        )
    if body.get("logprobs") is not None:
        raise UnsupportedParameter("'logprobs' is not supported on /v1/completions", param="logprobs")
    best_of, n = body.get("best_of"), body.get("n")
    if best_of is not None and best_of != (1 if n is None else n):
        raise UnsupportedParameter(
            "'best_of' is not supported (only best_of equal to n, which selects nothing)", param="best_of"
        )
    for name in _CHAT_ONLY:
        if body.get(name) is not None:
            raise UnsupportedParameter(
                f"'{name}' is not a field of the completions API: use /v1/chat/completions", param=name
            )


# -- answer ----------------------------------------------------------------------------------------------


def completion_id(chat_id: Any) -> str:
    """`chatcmpl-abc` -> `cmpl-abc`: the same answer keeps a recognisable, stable id."""
    text = chat_id if isinstance(chat_id, str) else ""
    return "cmpl-" + text.removeprefix("chatcmpl-")


def _text(content: Any) -> str:
    """A message's or delta's content as text: a string, parts with text, or nothing (null)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _finish(reason: Any) -> str | None:
    if reason is None or reason in _FINISH:
        return reason  # type: ignore[no-any-return]
    return "stop"  # tool_calls / function_call cannot occur without tools; anything else ended normally


def _head(chat: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = {
        "id": completion_id(chat.get("id")),
        "object": "text_completion",
        "created": chat.get("created") if isinstance(chat.get("created"), int) else 0,
        "model": chat.get("model") if isinstance(chat.get("model"), str) else "",
    }
    if chat.get("system_fingerprint") is not None:
        head["system_fingerprint"] = chat["system_fingerprint"]
    return head


def text_completion(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion object as a text_completion object."""
    choices = []
    for i, choice in enumerate(c for c in chat.get("choices") or () if isinstance(c, dict)):
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        choices.append(
            {
                "text": _text(message.get("content")),
                "index": choice.get("index", i),
                "logprobs": None,
                "finish_reason": _finish(choice.get("finish_reason")) or "stop",
            }
        )
    out = _head(chat)
    out["choices"] = choices
    if chat.get("usage") is not None:
        out["usage"] = chat["usage"]  # the same shape (CompletionUsage), details included
    return out


def completion_body(body: bytes) -> bytes:
    """The chat service's answer bytes (a chat.completion) as a text_completion's bytes."""
    chat = orjson.loads(body)
    return orjson.dumps(text_completion(chat if isinstance(chat, dict) else {}))


class CompletionStream:
    """Chat chunk events in, text_completion chunk events out, for one stream.

    A chunk with text or a finish reason becomes a completion chunk (the same object as the non-stream
    answer, text as the delta); the usage chunk (`choices: []`) keeps its usage; `[DONE]`, keep-alive
    comments and error events pass as they are. A chunk with nothing to say (the role-only first chunk)
    is dropped, as is data that is not a JSON object (a client could not parse it either).
    """

    __slots__ = ()

    def event(self, event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None:
            return event  # a comment or keep-alive
        if data == b"[DONE]":
            return DONE_EVENT
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk:
            return event  # an upstream or gateway error mid-stream: the SDK raises it as APIError
        out = self.chunk(chunk)
        return None if out is None else encode_event(out)

    @staticmethod
    def chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
        raw = chunk.get("choices")
        choices = []
        for i, choice in enumerate(c for c in raw or () if isinstance(c, dict)):
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            text, finish = _text(delta.get("content")), _finish(choice.get("finish_reason"))
            if text or finish is not None:
                choices.append(
                    {"text": text, "index": choice.get("index", i), "logprobs": None, "finish_reason": finish}
                )
        usage = chunk.get("usage")
        if not choices and usage is None:
            return None
        out = _head(chunk)
        out["choices"] = choices
        if "usage" in chunk:
            out["usage"] = usage
        return out
