"""The local provider's media tasks with the real models, through `LocalProvider.media()` and the router.

No mocks and no network: MiniLM embeds, piper speaks, Whisper tiny.en transcribes what piper said.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import re
import struct
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from portway.config import RoutingConfig
from portway.errors import UpstreamBadRequest
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.local import LocalProvider
from portway.providers.media import MediaCall, MediaResult, Task, Upload
from portway.routing.attempts import AttemptRunner, MediaJob
from portway.routing.keypool import KeyPool
from portway.routing.router import Target
from tests.integration.local_fixtures import MEDIA, skip_unless_installed

skip_unless_installed(*MEDIA, reason="needs the media extra: pip install portway[media]")

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.local_media]
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local() -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(ProviderSettings("local", "local"))
    yield provider
    await provider.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner(local: LocalProvider) -> AttemptRunner:
    pools = {"local": KeyPool("local", [None], breaker_threshold=5, breaker_cooldown=30)}
    return AttemptRunner({"local": local}, pools, RoutingConfig(deadline=120, attempt_timeout=120))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def spoken(local: LocalProvider, tmp_path_factory: pytest.TempPathFactory) -> Upload:
    """What piper says of SENTENCE, streamed, kept as a WAV upload for the transcription tests."""
    payload = {"input": SENTENCE, "voice": "alloy", "response_format": "wav"}
    result = await local.media(MediaCall(Task.SPEECH, payload, "piper-joe", None, 120))
    assert result.stream is not None and result.body is None  # streamed as synthesized
    audio = b"".join([chunk async for chunk in result.stream])
    path = tmp_path_factory.mktemp("speech") / "spoken.wav"
    path.write_bytes(audio)
    return Upload("file", "spoken.wav", "audio/wav", path, len(audio))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def _media(
    local: LocalProvider, task: Task, model: str, payload: dict[str, Any], files: list[Upload] | None = None
) -> MediaResult:
    return await local.media(MediaCall(task, payload, model, None, 120, files or []))


async def test_embeddings_are_openais_list_of_384_values(local: LocalProvider) -> None:
    texts = ["A cat sits on the mat.", "There is a cat sitting on a mat.", "Stock prices fell on Monday."]
    result = await _media(local, Task.EMBEDDINGS, "all-minilm-l6-v2", {"input": texts})
    body = json.loads(result.body or b"")
    assert body["object"] == "list" and body["model"] == "local/all-minilm-l6-v2" == result.served_model
    vectors = [d["embedding"] for d in body["data"]]
    assert [len(v) for v in vectors] == [384] * 3
    assert _dot(vectors[0], vectors[1]) > _dot(vectors[0], vectors[2]) + 0.3  # paraphrases are closer
    assert body["usage"]["prompt_tokens"] == result.units.prompt_tokens > 0
    packed = await _media(
        local, Task.EMBEDDINGS, "all-minilm-l6-v2", {"input": texts[0], "encoding_format": "base64"}
    )
    raw = base64.b64decode(json.loads(packed.body or b"")["data"][0]["embedding"])
    assert list(struct.unpack("<384f", raw)) == pytest.approx(vectors[0], abs=1e-6)


async def test_speech_is_a_wav_that_decodes_and_is_not_silent(spoken: Upload) -> None:
    with wave.open(str(spoken.path)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 22_050)
        pcm = reader.readframes(reader.getnframes())
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert 1.0 < len(samples) / 22_050 < 8.0
    assert math.sqrt(sum(s * s for s in samples) / len(samples)) > 500  # silence is ~0


async def test_transcription_of_the_speech_has_the_words(local: LocalProvider, spoken: Upload) -> None:
    result = await _media(local, Task.TRANSCRIPTION, "whisper-tiny.en", {"response_format": "json"}, [spoken])
    expected = _words(SENTENCE)
    got = _words(json.loads(result.body or b"")["text"])
    assert len(expected & got) >= len(expected) - 1, got
    assert result.served_model == "local/whisper-tiny.en" and result.units.audio_seconds > 1.0
    srt = await _media(local, Task.TRANSCRIPTION, "whisper-tiny.en", {"response_format": "srt"}, [spoken])
    assert srt.content_type.startswith("text/plain")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> ", (srt.body or b"").decode())


async def test_translation_of_english_is_its_transcription(local: LocalProvider, spoken: Upload) -> None:
    payload = {"response_format": "verbose_json", "temperature": "0"}  # multipart fields arrive as text
    result = await _media(local, Task.TRANSLATION, "whisper-tiny.en", payload, [spoken])
    body = json.loads(result.body or b"")
    assert body["task"] == "translate" and body["language"] == "english" and body["segments"]
    assert "fox" in body["text"].lower()


async def test_bad_input_names_the_field(local: LocalProvider, runner: AttemptRunner) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        await _media(local, Task.SPEECH, "piper-joe", {"input": "Hi.", "voice": "darth"})
    assert (caught.value.kind, caught.value.status, caught.value.param) == (
        FailureKind.BAD_REQUEST,
        400,
        "voice",
    )
    job = MediaJob(Task.SPEECH, {"input": "Hi.", "voice": "darth"})
    with pytest.raises(UpstreamBadRequest) as through:  # the router returns it as is: no fallback
        await runner.run_job([Target("local", "piper-joe")], job)
    assert through.value.status_code == 400 and through.value.param == "voice"


async def test_through_the_router_and_wrong_model_ids(local: LocalProvider, runner: AttemptRunner) -> None:
    outcome = await runner.run_job(
        [Target("local", "all-minilm-l6-v2")], MediaJob(Task.EMBEDDINGS, {"input": "hi"})
    )
    assert outcome.target.model == "all-minilm-l6-v2" and isinstance(outcome.result, MediaResult)
    with pytest.raises(UpstreamFailure) as caught:  # a local model of another task
        await _media(local, Task.EMBEDDINGS, "piper-joe", {"input": "hi"})
    assert caught.value.error_code == "model_not_supported_for_endpoint" and caught.value.status == 400
    with pytest.raises(UpstreamFailure) as caught:
        await _media(local, Task.EMBEDDINGS, "no-such-model", {"input": "hi"})
    assert caught.value.error_code == "model_not_found"


async def test_building_the_provider_imports_no_media_engine(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from portway.providers.base import ProviderSettings\n"
        "from portway.providers.local import LocalProvider\n"
        "LocalProvider(ProviderSettings('local', 'local'))\n"
        "heavy = {'torch', 'sentence_transformers', 'piper', 'faster_whisper', 'av'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    run = functools.partial(subprocess.run, check=True, timeout=60, cwd=tmp_path)
    await asyncio.to_thread(run, [sys.executable, "-c", code])
