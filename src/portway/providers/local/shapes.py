"""OpenAI response objects for the local model: chat.completion and chat.completion.chunk."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from portway.providers.base import Usage


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass(frozen=True, slots=True)
class ResponseShape:
    """The id / created / model every object of one response shares."""

    id: str
    created: int
    model: str
    include_usage: bool = False  # stream: OpenAI then sends "usage": null on every chunk but the last

    @classmethod
    def new(cls, model: str, *, include_usage: bool = False) -> ResponseShape:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model, include_usage)

    def completion_body(
        self,
        text: str | None,
        finish_reason: str,
        usage: Usage,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage_dict(usage),
                "system_fingerprint": None,
            }
        )

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _delta(
        self, delta: dict[str, Any], finish_reason: str | None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._chunk([choice])

    def role_chunk(self, content: str | None = "") -> dict[str, Any]:
        """The first chunk (`content` None when the answer may be a tool call, as OpenAI sends it)."""
        return self._delta({"role": "assistant", "content": content}, None)

    def content_chunk(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text}, None)

    def delta_chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return self._delta(delta, None)

    def logprobs_chunk(self, text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
        return self._delta({"content": text}, None, {"content": logprobs, "refusal": None})

    def finish_chunk(self, finish_reason: str) -> dict[str, Any]:
        return self._delta({}, finish_reason)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage_dict(usage)
        return chunk
