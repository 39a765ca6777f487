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
from portway.providers.local.model import LoadedModel
from portway.providers.local.params import GenerationRequest


@dataclass(slots=True)
class GenerationResult:
    finish_reason: str  # "stop" | "length"
    usage: Usage
    cancelled: bool = False


def run_generation(
    model: LoadedModel,
    request: GenerationRequest,
    cancel: threading.Event,
    on_text: Callable[[str], None],
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
    on_text: Callable[[str], None],
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
    finish_reason = "stop"
    started = False
    cancelled = cancel.is_set()
    if not cancelled:
        chunks = model.llm.create_chat_completion(messages=request.messages, stream=True, **request.sampling)
        try:
            for chunk in chunks:
                started = True
                if cancel.is_set():
                    cancelled = True
                    break
                finish_reason = _take(chunk, on_text) or finish_reason
        finally:
            chunks.close()
    # llama.cpp evaluates every sampled token but the last before stopping, whatever the reason
    # (end-of-generation token, stop string, max_tokens, our cancel): generated = n_tokens - prompt + 1.
    completion_tokens = model.llm.n_tokens - prompt_tokens + 1 if started else 0
    completion_tokens = max(0, min(completion_tokens, request.max_tokens))
    return GenerationResult(finish_reason, Usage(prompt_tokens, completion_tokens), cancelled)


def _take(chunk: Any, on_text: Callable[[str], None]) -> str | None:
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
