"""One generation, run on a worker thread (blocking llama.cpp calls never touch the event loop).

Both the streaming and the non-streaming API are served from llama-cpp-python's streaming generator,
so a cancel flag can be checked between two tokens and the generator closed: a timed-out or
disconnected request stops costing CPU within one token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portway.providers.base import FailureKind, UpstreamFailure, Usage
from portway.providers.local import grammar
from portway.providers.local.model import LoadedModel
from portway.providers.local.params import GenerationRequest


@dataclass(slots=True)
class GenerationResult:
    finish_reason: str  # "stop" | "length"
    usage: Usage
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of text with its tokens' logprobs (OpenAI's `logprobs.content` entries); only when asked."""

    text: str
    logprobs: list[dict[str, Any]]


def run_generation(
    model: LoadedModel,
    request: GenerationRequest,
    cancel: threading.Event,
    on_text: Callable[[str | Piece], None],
) -> GenerationResult:
    """Generates, handing each piece of text to `on_text` (on this thread) as soon as llama.cpp has it."""
    try:
        return _generate(model, request, cancel, on_text)
    except UpstreamFailure:
        raise
    except Exception as exc:
        raise UpstreamFailure(
            FailureKind.SERVER, f"local model generation failed ({type(exc).__name__})", status=500
        ) from exc


def _generate(
    model: LoadedModel,
    request: GenerationRequest,
    cancel: threading.Event,
    on_text: Callable[[str | Piece], None],
) -> GenerationResult:
    prompt_tokens = model.count_prompt_tokens(request.messages)
    if prompt_tokens >= model.n_ctx:
        raise UpstreamFailure(
            FailureKind.BAD_REQUEST,
            f"the prompt is {prompt_tokens} tokens; the local model's context window is {model.n_ctx}",
            status=400,
            error_code="context_length_exceeded",
            param="messages",
        )
    constraint = grammar.for_plan(model.llm, request.plan) if request.plan is not None else None
    take = _take if request.top_logprobs is None else _take_with_logprobs(request.top_logprobs)
    finish_reason = "stop"
    started = False
    cancelled = cancel.is_set()
    if not cancelled:
        chunks = model.llm.create_chat_completion(
            messages=request.messages, stream=True, grammar=constraint, **request.sampling
        )
        try:
            for chunk in chunks:
                started = True
                if cancel.is_set():
                    cancelled = True
                    break
                finish_reason = take(chunk, on_text) or finish_reason
        finally:
            chunks.close()
    # llama.cpp evaluates every sampled token but the last before stopping, whatever the reason
    # (end-of-generation token, stop string, max_tokens, our cancel): generated = n_tokens - prompt + 1.
    completion_tokens = model.llm.n_tokens - prompt_tokens + 1 if started else 0
    completion_tokens = max(0, min(completion_tokens, request.max_tokens))
    return GenerationResult(finish_reason, Usage(prompt_tokens, completion_tokens), cancelled)


def _take(chunk: Any, on_text: Callable[[str | Piece], None]) -> str | None:
    """Passes a chunk's text on; returns its finish_reason, if any."""
    choices = chunk.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content")
    if text:
        on_text(text)
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None


def _take_with_logprobs(top: int) -> Callable[[Any, Callable[[str | Piece], None]], str | None]:
    """`_take` for a request that asked for logprobs: each token's text comes with its logprobs."""

    def take(chunk: Any, on_text: Callable[[str | Piece], None]) -> str | None:
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") or ""
        entries = ((choice.get("logprobs") or {}).get("content")) or []
        if text or entries:
            on_text(Piece(text, [_entry(entry, top) for entry in entries]))
        reason = choice.get("finish_reason")
        return reason if isinstance(reason, str) else None

    return take


def _entry(raw: dict[str, Any], top: int) -> dict[str, Any]:
    """llama-cpp-python's entry in OpenAI's shape: `top` alternatives, most likely first, with bytes (it
    lists the sampled token among the alternatives even when it is not one of the `top`)."""
    alternatives = sorted(raw.get("top_logprobs") or [], key=lambda alt: alt["logprob"], reverse=True)
    token = str(raw.get("token", ""))
    return {
        "token": token,
        "logprob": float(raw["logprob"]),
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {
                "token": alt["token"],
                "logprob": float(alt["logprob"]),
                "bytes": list(alt["token"].encode("utf-8")),
            }
            for alt in alternatives[:top]
        ],
    }
