"""Seed 002 (AI Platform Backend) served by portway: every curl example of the seed replayed as written
against a real portway process whose `hf` provider is the fake upstream (Hugging Face task endpoints and
its OpenAI-compatible chat), with `compat.platform: {enabled, auth: none, provider: hf}`. The seed's model
ids are mapped to the fake's task models with aliases (the fake picks a task by a word in the id)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import hf_tasks
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

JSON = {"Content-Type": "application/json"}
PNG = hf_tasks.png(4, 4, b"\x10\x20\x30")
ALIASES = {
    "stabilityai/stable-diffusion-3-medium": "sd3-tti",
    "runwayml/stable-diffusion-inpainting": "inpaint-i2i",
    "espnet/kan-bayashi_ljspeech_vits": "ljspeech-tts",
    "openai/whisper-base": "whisper-asr",
    "sentence-transformers/all-MiniLM-L6-v2": "minilm-embed",
    "damo-vilab/text-to-video-ms-1.7b": "damo-ttv",
    "damo-vilab/image-to-video-ms-1.7b": "damo-i2v-ttv",
}


def config(up: FakeUpstream) -> dict[str, Any]:
    return {
        "routing": {"deadline": 2, "backoff_base": 0.01, "backoff_max": 0.02},
        "providers": {
            "hf": {
                "type": "huggingface",
                "base_url": up.base_url,
                "api_keys": ["k-hf"],
                "options": {"inference_url": up.url + "/hf-inference"},
            }
        },
        "models": {seed: [f"hf/{fake}"] for seed, fake in ALIASES.items()},
        "compat": {"platform": {"enabled": True, "auth": "none", "provider": "hf"}},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("platform"), config(upstream))
    yield proc
    proc.stop()


@pytest.fixture
def http(gw: PortwayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        yield client


def _json(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    return body


def _image_answer(body: dict[str, Any], model: str) -> None:
    assert set(body) == {"image", "model", "generation_time", "size"}
    image = base64.b64decode(body["image"])
    assert image.startswith(b"\x89PNG") and body["size"] == len(image)
    assert body["model"] == model and isinstance(body["generation_time"], float)


def test_image(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {
        "prompt": "A serene landscape with mountains and a lake",
        "model": "stabilityai/stable-diffusion-3-medium",
        "height": 512,
        "width": 512,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
    }
    _image_answer(_json(http.post("/api/image", headers=JSON, json=body)), body["model"])
    sent = upstream.requests[-1]
    assert sent.path == "/hf-inference/models/sd3-tti" and sent.body is not None
    assert sent.body["inputs"] == body["prompt"]
    assert sent.body["parameters"] == {
        "width": 512,
        "height": 512,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
    }


def test_image_default_model(http: httpx.Client, upstream: FakeUpstream) -> None:
    _image_answer(
        _json(http.post("/api/image", json={"prompt": "a cat"})), "stabilityai/stable-diffusion-3-medium"
    )


def test_edit_image(http: httpx.Client, upstream: FakeUpstream) -> None:
    files = {"image": ("original.png", PNG, "image/png"), "mask": ("mask.png", PNG, "image/png")}
    data = {"prompt": "A red car", "model": "runwayml/stable-diffusion-inpainting"}
    _image_answer(_json(http.post("/api/edit-image", files=files, data=data)), data["model"])
    sent = upstream.requests[-1]
    assert sent.path == "/hf-inference/models/inpaint-i2i" and sent.body is not None
    assert base64.b64decode(sent.body["inputs"]) == PNG and "mask_image" in sent.body["parameters"]


def test_llm(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is machine learning?"},
        ],
        "model": "mistralai/Mistral-7B-Instruct-v0.1",
        "max_tokens": 256,
        "temperature": 0.7,
    }
    answer = _json(http.post("/api/llm", headers=JSON, json=body))
    assert answer["response"] == "Echo: What is machine learning?" and answer["model"] == body["model"]
    assert isinstance(answer["generation_time"], float) and answer["usage"]["total_tokens"] > 0
    sent = upstream.requests[-1]
    assert sent.model == "mistralai/Mistral-7B-Instruct-v0.1" and sent.key == "k-hf"
    assert sent.body is not None and sent.body["max_tokens"] == 256 and sent.body["temperature"] == 0.7


def test_tts(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {
        "text": "Hello, this is a test of the text to speech system.",
        "model": "espnet/kan-bayashi_ljspeech_vits",
    }
    resp = http.post("/api/tts", headers=JSON, json=body)  # -o output.wav
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    assert resp.content[:4] == b"RIFF" and upstream.requests[-1].path == "/hf-inference/models/ljspeech-tts"


def test_stt(http: httpx.Client, upstream: FakeUpstream) -> None:
    recording = hf_tasks.wav(0.1)
    files = {"audio": ("recording.wav", recording, "audio/wav")}
    answer = _json(http.post("/api/stt", files=files, data={"model": "openai/whisper-base"}))
    assert answer["text"] == f"fake transcription of {len(recording)} bytes"
    assert answer["model"] == "openai/whisper-base" and isinstance(answer["generation_time"], float)
    assert upstream.requests[-1].path == "/hf-inference/models/whisper-asr"


def test_embedding(http: httpx.Client) -> None:
    body = {
        "text": "The quick brown fox jumps over the lazy dog",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    answer = _json(http.post("/api/embedding", headers=JSON, json=body))
    assert answer["dimensions"] == hf_tasks.EMBED_DIM == len(answer["embedding"])
    assert all(isinstance(x, float) for x in answer["embedding"]) and answer["model"] == body["model"]


def _video_answer(answer: dict[str, Any], model: str) -> None:
    assert base64.b64decode(answer["video"]) == hf_tasks.VIDEO_BYTES and answer["size"] == len(
        hf_tasks.VIDEO_BYTES
    )
    assert answer["content_type"] == "video/mp4" and answer["model"] == model
    assert isinstance(answer["generation_time"], float)


def test_text_to_video(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {
        "prompt": "A cat playing with a ball",
        "model": "damo-vilab/text-to-video-ms-1.7b",
        "duration": 6,
        "fps": 8,
    }
    _video_answer(_json(http.post("/api/video/text-to-video", headers=JSON, json=body)), body["model"])
    sent = upstream.requests[-1]
    assert sent.path == "/hf-inference/models/damo-ttv" and sent.body is not None
    assert sent.body["inputs"] == "A cat playing with a ball"


def test_image_to_video(http: httpx.Client, upstream: FakeUpstream) -> None:
    files = {"image": ("input.png", PNG, "image/png")}
    data = {"prompt": "The person is waving", "model": "damo-vilab/image-to-video-ms-1.7b"}
    _video_answer(_json(http.post("/api/video/image-to-video", files=files, data=data)), data["model"])
    sent = upstream.requests[-1]
    assert sent.path == "/hf-inference/models/damo-i2v-ttv" and sent.body is not None
    assert (
        base64.b64decode(sent.body["inputs"]) == PNG and sent.body["parameters"]["prompt"] == data["prompt"]
    )


def test_health(http: httpx.Client) -> None:
    body = _json(http.get("/health"))
    assert body["status"] == "healthy" and {"timestamp", "version", "service"} <= set(body)


def _error(resp: httpx.Response, status: int, code: str) -> None:
    body = _json(resp, status)
    assert set(body) == {"detail", "error_code", "status_code"}
    assert body["error_code"] == code and body["status_code"] == status and isinstance(body["detail"], str)


def test_validation_error(http: httpx.Client, upstream: FakeUpstream) -> None:
    _error(http.post("/api/image", json={"model": "x"}), 400, "VALIDATION_ERROR")
    _error(http.post("/api/llm", json={"messages": []}), 400, "VALIDATION_ERROR")
    _error(http.post("/api/image", json={"prompt": "p", "width": "wide"}), 400, "VALIDATION_ERROR")
    _error(http.post("/api/stt", files={"other": ("a.wav", b"x", "audio/wav")}), 400, "VALIDATION_ERROR")
    assert upstream.requests == []


def test_model_not_found(http: httpx.Client) -> None:
    _error(http.post("/api/image", json={"prompt": "p", "model": "no/such-model"}), 404, "MODEL_NOT_FOUND")


def test_huggingface_api_error(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.script(["500", "500"], model="sd3-tti")
    _error(http.post("/api/image", json={"prompt": "p"}), 502, "HUGGINGFACE_API_ERROR")


def test_timeout_error(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.script(["hang"], model="minilm-embed")
    _error(http.post("/api/embedding", json={"text": "t"}), 504, "TIMEOUT_ERROR")
