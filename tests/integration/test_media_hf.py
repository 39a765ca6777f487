"""`type: huggingface` media tasks against the fake upstream's Hugging Face task endpoints (a real server).

The provider is called directly (one attempt) and through the AttemptRunner (fallback when a model stays
cold). The fake picks the task from a word in the model id (tests/fakes/hf_tasks.py).
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from portway.config import RoutingConfig
from portway.http.client import Transport
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.huggingface import HuggingFaceProvider
from portway.providers.media import MediaCall, MediaResult, Task, Upload
from portway.routing.attempts import AttemptRunner, MediaJob
from portway.routing.keypool import KeyPool
from portway.routing.router import Target
from tests.fakes import hf_tasks as fake
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")
KEY = "hf_test_key"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def transport() -> AsyncIterator[Transport]:
    t = Transport()
    yield t
    await t.aclose()


@pytest.fixture
def hf(upstream: FakeUpstream, transport: Transport) -> HuggingFaceProvider:
    upstream.reset()
    return _provider("hf", upstream, transport)


def _provider(name: str, upstream: FakeUpstream, transport: Transport) -> HuggingFaceProvider:
    options = {"inference_url": upstream.url + "/hf-inference"}
    return HuggingFaceProvider(
        ProviderSettings(name, "huggingface", upstream.base_url, options=options), transport
    )


def _upload(tmp_path: Path, field: str, name: str, content_type: str, data: bytes) -> Upload:
    path = tmp_path / name
    path.write_bytes(data)
    return Upload(field, name, content_type, path, len(data))


async def _call(
    hf: HuggingFaceProvider, task: Task, model: str, payload: dict[str, Any], **kw: object
) -> MediaResult:
    files = kw.pop("files", [])
    timeout = kw.pop("timeout", 5.0)
    return await hf.media(MediaCall(task, payload, model, KEY, timeout, files))  # type: ignore[arg-type]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


async def test_embeddings(hf: HuggingFaceProvider, upstream: FakeUpstream) -> None:
    result = await _call(hf, Task.EMBEDDINGS, "fake/embed-mini", {"input": ["alpha", "beta gamma"]})
    body = json.loads(result.body or b"")
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "fake/embed-mini"
    assert body["data"][1]["embedding"] == pytest.approx(_unit(fake.vector("beta gamma")))
    assert body["usage"]["prompt_tokens"] == result.units.prompt_tokens > 0
    (rec,) = upstream.requests
    assert (
        rec.path == "/hf-inference/models/fake/embed-mini" and rec.headers["authorization"] == "Bearer " + KEY
    )
    assert rec.body == {"inputs": ["alpha", "beta gamma"], "normalize": True}


async def test_text_to_image_one_call_per_image(hf: HuggingFaceProvider, upstream: FakeUpstream) -> None:
    payload = {"prompt": "a fox", "n": 2, "size": "64x32", "seed": 5, "negative_prompt": "blur"}
    result = await _call(hf, Task.IMAGE_GENERATION, "fake/tti-xl", payload)
    images = [base64.b64decode(d["b64_json"]) for d in json.loads(result.body or b"")["data"]]
    assert len(images) == 2 and all(i.startswith(b"\x89PNG") for i in images) and images[0] != images[1]
    assert (result.units.images, result.units.image_size) == (2, "64x32")
    seeds = sorted(r.body["parameters"]["seed"] for r in upstream.requests if r.body)
    assert seeds == [5, 6]
    assert upstream.requests[0].body["parameters"]["width"] == 64  # type: ignore[index]


async def test_image_edit_sends_image_and_mask(
    hf: HuggingFaceProvider, upstream: FakeUpstream, tmp_path: Path
) -> None:
    image = _upload(tmp_path, "image", "in.png", "image/png", fake.png(2, 2, b"\x01\x02\x03"))
    mask = _upload(tmp_path, "mask", "mask.png", "image/png", fake.png(2, 2, b"\x00\x00\x00"))
    result = await _call(hf, Task.IMAGE_EDIT, "fake/i2i", {"prompt": "green"}, files=[image, mask])
    (item,) = json.loads(result.body or b"")["data"]
    assert base64.b64decode(item["b64_json"]) == fake.png(1, 1, b"\x00\xff\x00")  # the fake saw the mask
    (rec,) = upstream.requests
    assert base64.b64decode(rec.body["inputs"]) == image.path.read_bytes()  # type: ignore[index]
    assert rec.body["parameters"]["prompt"] == "green"  # type: ignore[index]


async def test_speech_is_audio_by_content_type(hf: HuggingFaceProvider) -> None:
    result = await _call(hf, Task.SPEECH, "fake/tts", {"input": "Hello there.", "voice": "alloy"})
    assert result.content_type == "audio/wav" and result.units.characters == 12
    with wave.open(io.BytesIO(result.body or b"")) as reader:
        assert reader.getnframes() > 0


async def test_transcription_sends_the_file_as_the_body(
    hf: HuggingFaceProvider, upstream: FakeUpstream, tmp_path: Path
) -> None:
    audio = _upload(tmp_path, "file", "a.wav", "audio/wav", fake.wav(1.5))
    result = await _call(hf, Task.TRANSCRIPTION, "fake/asr", {"response_format": "json"}, files=[audio])
    assert json.loads(result.body or b"")["text"] == f"fake transcription of {audio.size} bytes"
    (rec,) = upstream.requests
    assert rec.headers["content-type"] == "audio/wav" and rec.body is None
    pytest.importorskip("av")
    assert result.units.audio_seconds == pytest.approx(1.5, abs=0.01)  # probed from the file


async def test_transcription_srt_asks_for_timestamps(
    hf: HuggingFaceProvider, upstream: FakeUpstream, tmp_path: Path
) -> None:
    audio = _upload(tmp_path, "file", "a.wav", "audio/wav", fake.wav(2.0))
    result = await _call(hf, Task.TRANSCRIPTION, "fake/asr", {"response_format": "srt"}, files=[audio])
    assert result.content_type.startswith("text/plain")
    assert (result.body or b"").decode().startswith("1\n00:00:00,000 --> 00:00:01,000\nfake transcription\n")
    assert upstream.requests[0].body["parameters"] == {"return_timestamps": True}  # type: ignore[index]


async def test_video(hf: HuggingFaceProvider) -> None:
    result = await _call(hf, Task.VIDEO, "fake/ttv", {"prompt": "waves", "seconds": "8"})
    assert (result.content_type, result.body, result.units.video_seconds) == (
        "video/mp4",
        fake.VIDEO_BYTES,
        8.0,
    )


async def test_an_answer_of_the_wrong_kind_is_a_bad_response(hf: HuggingFaceProvider) -> None:
    with pytest.raises(UpstreamFailure) as caught:  # an embeddings model asked for an image: JSON comes back
        await _call(hf, Task.IMAGE_GENERATION, "fake/embed-mini", {"prompt": "x"})
    assert caught.value.kind is FailureKind.BAD_RESPONSE


# --- a cold model ---------------------------------------------------------------------------------------


async def test_loading_model_is_waited_on_then_answers(
    hf: HuggingFaceProvider, upstream: FakeUpstream
) -> None:
    upstream.script(["loading:0.3", "ok"], model="fake/embed-cold")
    started = time.monotonic()
    result = await _call(hf, Task.EMBEDDINGS, "fake/embed-cold", {"input": "x"})
    assert time.monotonic() - started >= 0.3  # it slept the estimated time before retrying
    assert json.loads(result.body or b"")["data"][0]["embedding"] == pytest.approx(_unit(fake.vector("x")))
    assert len(upstream.requests) == 2


async def test_a_long_load_is_waited_on_only_within_the_attempts_timeout(
    hf: HuggingFaceProvider, upstream: FakeUpstream
) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamFailure) as caught:
        await _call(hf, Task.EMBEDDINGS, "fake/embed@loading:30", {"input": "x"}, timeout=1.5)
    elapsed = time.monotonic() - started
    assert caught.value.kind is FailureKind.SERVER and caught.value.status == 503
    assert 0.9 <= elapsed < 1.5  # slept what was left (keeping time for the retry), not HF's 30 s
    assert len(upstream.requests) == 2  # then one retry, still loading: give up, the router falls back


async def test_still_loading_falls_back_through_the_router(
    upstream: FakeUpstream, transport: Transport
) -> None:
    upstream.reset()
    providers = {
        "cold": _provider("cold", upstream, transport),
        "warm": _provider("warm", upstream, transport),
    }
    rc = RoutingConfig(deadline=10, backoff_base=0.01, backoff_max=0.02, retries_per_target=0)
    pools = {n: KeyPool(n, [KEY], breaker_threshold=5, breaker_cooldown=30) for n in providers}
    runner = AttemptRunner(providers, pools, rc)
    targets = [Target("cold", "fake/embed@loading:0.05"), Target("warm", "fake/embed-ok")]
    outcome = await runner.run_job(targets, MediaJob(Task.EMBEDDINGS, {"input": ["x"]}))
    assert outcome.target.provider == "warm"
    assert [a.kind for a in outcome.attempts] == ["server", "ok"]
    cold = [r for r in upstream.requests if r.model == "fake/embed@loading:0.05"]
    assert len(cold) == 3  # the first call and MAX_LOADING_WAITS retries, then the next target
