"""The local media engines with their real models (MiniLM, piper joe, Whisper tiny.en): no mocks, no network.

Each model is loaded once for the module; the whole module takes ~10 s on 2 cores, most of it torch's import.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import struct
import wave
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from portway.providers.local.embeddings import DIMENSIONS, EmbeddingsEngine
from portway.providers.local.engine import MediaInputError
from portway.providers.local.speech import SpeechEngine, speech_request
from portway.providers.local.transcription import TranscriptionEngine, render
from tests.integration.local_fixtures import MEDIA, skip_unless_installed

skip_unless_installed(*MEDIA, reason="needs the media extra: pip install portway[media]")

pytestmark = [pytest.mark.local_media, pytest.mark.asyncio(loop_scope="module")]

SENTENCE = "Hello from the gateway, this is a test."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embeddings() -> AsyncIterator[EmbeddingsEngine]:
    engine = EmbeddingsEngine()
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def speech() -> AsyncIterator[SpeechEngine]:
    engine = SpeechEngine()
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def transcription() -> AsyncIterator[TranscriptionEngine]:
    engine = TranscriptionEngine()
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def spoken(speech: SpeechEngine) -> bytes:
    audio, content_type = await speech.synthesize(SENTENCE, "alloy", 1.0, "wav")
    assert content_type == "audio/wav"
    return audio


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def rms(pcm: bytes) -> float:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# --- embeddings -----------------------------------------------------------------------------------------


async def test_embeddings_have_384_unit_dimensions_and_rank_paraphrases(embeddings: EmbeddingsEngine) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly revenue rose sharply."]
    vectors, prompt_tokens = await embeddings.embed(texts, None)
    assert [len(v) for v in vectors] == [DIMENSIONS] * 3
    assert all(abs(dot(v, v) - 1.0) < 1e-4 for v in vectors)
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2]) + 0.3
    assert 15 <= prompt_tokens <= 30  # word pieces, not characters


async def test_embeddings_dimensions_and_token_arrays(embeddings: EmbeddingsEngine) -> None:
    bpe_openai = pytest.importorskip("bpe_openai")
    (full,), _ = await embeddings.embed(SENTENCE, None)
    (short,), _ = await embeddings.embed(SENTENCE, 64)
    assert len(short) == 64 and abs(dot(short, short) - 1.0) < 1e-6
    ids = bpe_openai.get_encoding("cl100k_base").encode(SENTENCE)  # what LangChain sends by default
    (from_ids,), tokens = await embeddings.embed([ids], None)
    assert dot(from_ids, full) > 0.999 and tokens > 0
    with pytest.raises(MediaInputError) as caught:
        await embeddings.embed("x", 385)
    assert caught.value.param == "dimensions"
    with pytest.raises(MediaInputError) as caught:
        await embeddings.embed([[10**7]], None)
    assert caught.value.param == "input"


# --- speech ---------------------------------------------------------------------------------------------


async def test_speech_is_a_wav_that_decodes_and_is_not_silent(spoken: bytes) -> None:
    with wave.open(io.BytesIO(spoken)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 22_050)
        pcm = reader.readframes(reader.getnframes())
    assert 1.0 < len(pcm) / 2 / 22_050 < 6.0  # seconds of speech
    assert rms(pcm) > 500  # silence is ~0; this voice speaks at a few thousand


async def test_speech_speed_and_encoded_formats(speech: SpeechEngine) -> None:
    av = pytest.importorskip("av")
    slow, _ = await speech.synthesize("One two three.", "echo", 0.5, "pcm")
    fast, _ = await speech.synthesize("One two three.", "echo", 2.0, "pcm")
    assert len(slow) > 2.5 * len(fast)
    for fmt, content_type in (("mp3", "audio/mpeg"), ("opus", "audio/opus"), ("flac", "audio/flac")):
        audio, got_type = await speech.synthesize("One two three.", "nova", 1.0, fmt)
        assert got_type == content_type
        with av.open(io.BytesIO(audio)) as container:
            samples = sum(frame.samples for frame in container.decode(audio=0))
        assert samples > 0, fmt


async def test_speech_streams_header_first_then_sentences(speech: SpeechEngine) -> None:
    request = speech_request("First sentence here. And a second one.", "shimmer", 1.0, "wav")
    chunks = [chunk async for chunk in speech.stream(request)]
    assert chunks[0][:4] == b"RIFF" and len(chunks[0]) == 44
    assert len(chunks) >= 3  # header + one chunk per sentence
    with wave.open(io.BytesIO(b"".join(chunks))) as reader:
        assert rms(reader.readframes(10**7)) > 500


async def test_speech_refuses_an_unknown_voice(speech: SpeechEngine) -> None:
    with pytest.raises(MediaInputError) as caught:
        await speech.synthesize("Hi.", "darth", 1.0, "wav")
    assert caught.value.param == "voice"


# --- transcription --------------------------------------------------------------------------------------


async def test_transcription_of_the_local_speech_returns_the_words(
    transcription: TranscriptionEngine, spoken: bytes
) -> None:
    result = await transcription.transcribe(io.BytesIO(spoken), "en", None, 0.0)
    expected = words(SENTENCE)
    got = set(words(result.text))
    assert sum(w in got for w in expected) >= len(expected) - 1, result.text
    assert result.language == "en" and 1.0 < result.duration < 6.0
    assert result.segments
    assert 0 <= result.segments[0].start < result.segments[-1].end <= result.duration + 0.5
    srt = render(result, "srt")[0].decode()
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\w", srt), srt


async def test_transcription_refuses_what_it_cannot_serve(transcription: TranscriptionEngine) -> None:
    with pytest.raises(MediaInputError) as caught:
        await transcription.transcribe(io.BytesIO(b"this is not audio at all" * 50))
    assert caught.value.param == "file"
    with pytest.raises(MediaInputError) as caught:
        await transcription.transcribe(io.BytesIO(b"RIFF"), "fr")
    assert caught.value.param == "language"


# --- the concurrency limit ------------------------------------------------------------------------------


async def test_concurrent_calls_all_succeed_within_the_limit(
    embeddings: EmbeddingsEngine, speech: SpeechEngine
) -> None:
    results = await asyncio.gather(
        embeddings.embed("first text", None),
        embeddings.embed("second text", None),
        speech.synthesize("One.", "alloy", 1.0, "pcm"),
        speech.synthesize("Two.", "alloy", 1.0, "pcm"),
    )
    assert len(results[0][0][0]) == len(results[1][0][0]) == DIMENSIONS
    assert results[2][0] and results[3][0]
    assert embeddings.engine.peak == 1 and speech.engine.peak == 1  # max_concurrency defaults to 1
    assert embeddings.engine.running == speech.engine.running == 0
