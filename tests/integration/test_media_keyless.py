"""With no config file and no provider keys, OpenAI's default media model names answer from the local models:
what a user of the SDK's examples (or LangChain's OpenAIEmbeddings) meets first."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Iterator

import openai
import pytest

from tests.integration.local_fixtures import MEDIA, skip_unless_installed
from tests.integration.server import PortwayProcess

skip_unless_installed(*MEDIA, reason="the media extra is not installed")

pytestmark = pytest.mark.local_media


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    proc = PortwayProcess(tmp_path_factory.mktemp("keyless"), None)  # the built-in defaults, no keys
    try:
        yield openai.OpenAI(base_url=proc.base_url, api_key=proc.master_key, max_retries=0, timeout=120)
    finally:
        proc.stop()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_text_embedding_3_small_is_the_local_model(client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    got = client.embeddings.create(model="text-embedding-3-small", input=texts)
    vectors = [d.embedding for d in got.data]
    assert [len(v) for v in vectors] == [384, 384, 384]  # MiniLM's length, not OpenAI's 1536
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])
    assert got.usage.prompt_tokens > 0


def test_tts_1_speaks_with_an_openai_voice_and_whisper_1_hears_it(client: openai.OpenAI) -> None:
    speech = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello from the gateway.", response_format="wav"
    )
    audio = speech.read()
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnframes() > w.getframerate() // 4  # more than a quarter of a second of sound
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("hello.wav", audio, "audio/wav"), response_format="text"
    )
    assert "gateway" in str(text).lower()
