"""Seed 000 (Cheppu AI) served by portway: every request example of the seed replayed as written (method,
path, headers, body) against a real portway process whose providers are the fake upstreams (Groq as an
OpenAI-compatible server, Hugging Face task endpoints), with `compat.cheppu: {enabled, auth: none}`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from portway.config import CHEPPU_FALLBACKS
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
JSON = {"Content-Type": "application/json"}


def config(up: FakeUpstream) -> dict[str, object]:
    return {
        "routing": {"deadline": 4, "backoff_base": 0.01, "backoff_max": 0.02},
        "providers": {
            "groq": {"type": "openai", "base_url": up.base_url, "api_keys": ["k-groq"]},
            "hf": {
                "type": "huggingface",
                "base_url": up.base_url,
                "api_keys": ["k-hf"],
                "options": {"inference_url": up.url + "/hf-inference"},
            },
        },
        # The seed's image model, served by the fake's text-to-image model (it picks tasks by a word).
        "models": {SDXL: ["hf/sdxl-tti"]},
        "compat": {"cheppu": {"enabled": True, "auth": "none"}},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("cheppu"), config(upstream))
    yield proc
    proc.stop()


@pytest.fixture
def http(gw: PortwayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        yield client


def chat_requests(up: FakeUpstream) -> list[str]:
    return [r.model or "" for r in up.requests if r.path.endswith("/chat/completions")]


def test_status_lists_endpoints(http: httpx.Client) -> None:
    resp = http.get("/")  # curl https://cheppu-aichatbox.onrender.com/
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "status": "running",
        "message": "Cheppu AI Chatbot Proxy Server",
        "endpoints": {"proxy": "POST /", "health": "GET /health"},
    }


def test_health_has_a_timestamp(http: httpx.Client) -> None:
    resp = http.get("/health")
    body = resp.json()
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert body["status"] == "healthy" and ISO.match(body["timestamp"])
    assert body["service"] == "portway" and isinstance(body["version"], str)


def _check_completion(body: dict[str, object], used: str) -> None:
    assert isinstance(body["id"], str) and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and isinstance(body["model"], str)
    choice = body["choices"][0]  # type: ignore[index]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))  # type: ignore[index]
    assert body["used_model"] == used


def test_endpoint_3_chat(http: httpx.Client, upstream: FakeUpstream) -> None:
    body = {
        "type": "chat",
        "model": "llama-3.1-8b-instant",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello, how are you?"},
        ],
    }
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    _check_completion(resp.json(), "llama-3.1-8b-instant")
    assert resp.json()["choices"][0]["message"]["content"] == "Echo: Hello, how are you?"
    sent = upstream.requests[-1]
    assert sent.model == "llama-3.1-8b-instant" and sent.key == "k-groq"
    assert sent.body is not None and sent.body["temperature"] == 0.7 and sent.body["max_tokens"] == 4096


def test_curl_chat_and_example_1(http: httpx.Client) -> None:
    for content in ("Hello", "What is 2+2?"):
        body = {
            "type": "chat",
            "model": "llama-3.1-8b-instant",
            "messages": [{"role": "user", "content": content}],
        }
        resp = http.post("/", headers=JSON, json=body)
        assert resp.status_code == 200
        _check_completion(resp.json(), "llama-3.1-8b-instant")


def test_example_2_fallback_from_an_unknown_model(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.script(["404"], model="invalid-model-name")  # Groq: "Model not found"
    body = {"type": "chat", "model": "invalid-model-name", "messages": [{"role": "user", "content": "Hello"}]}
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 200
    _check_completion(resp.json(), "llama-3.1-8b-instant")  # the first of the chain
    assert chat_requests(upstream) == ["invalid-model-name", "llama-3.1-8b-instant"]


def test_fallback_chain_follows_the_seed_order(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.script(["503", "503"], model="llama-3.3-70b-versatile")  # "503 Model Loading", then its retry
    body = {
        "type": "chat",
        "model": "llama-3.3-70b-versatile",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 200
    _check_completion(resp.json(), "llama-3.1-8b-instant")
    assert chat_requests(upstream) == ["llama-3.3-70b-versatile"] * 2 + ["llama-3.1-8b-instant"]
    assert CHEPPU_FALLBACKS[:2] == ["groq/llama-3.1-8b-instant", "groq/llama-3.3-70b-versatile"]


@pytest.mark.parametrize(
    "inputs", ["A futuristic city with flying cars at sunset, 4k, detailed", "A beautiful sunset"]
)
def test_example_3_image(http: httpx.Client, upstream: FakeUpstream, inputs: str, tmp_path: Path) -> None:
    resp = http.post("/", headers=JSON, json={"type": "image", "model": SDXL, "inputs": inputs})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content.startswith(b"\x89PNG\r\n\x1a\n")  # --output image.png
    assert int(resp.headers["content-length"]) == len(resp.content)
    hf = upstream.requests[-1]
    assert hf.path == "/hf-inference/models/sdxl-tti" and hf.body is not None and hf.body["inputs"] == inputs


@pytest.mark.parametrize("inputs", ["Hello, this is a test.", "Hello world"])
def test_endpoint_5_audio(http: httpx.Client, upstream: FakeUpstream, inputs: str) -> None:
    body = {"type": "audio", "model": "facebook/mms-tts-eng", "inputs": inputs}
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    assert resp.content[:4] == b"RIFF" and resp.content[8:12] == b"WAVE"
    assert upstream.requests[-1].path == "/hf-inference/models/facebook/mms-tts-eng"


def test_400_missing_fields(http: httpx.Client, upstream: FakeUpstream) -> None:
    for body in ({"type": "image", "model": SDXL}, {"type": "audio", "inputs": "hi"}, {}):
        resp = http.post("/", headers=JSON, json=body)
        assert resp.status_code == 400 and resp.headers["content-type"] == "application/json"
        assert resp.json() == {"error": "Missing required fields: model and inputs"}
    assert upstream.requests == []


def test_404_not_found_has_an_error(http: httpx.Client) -> None:
    resp = http.get("/no/such/path")
    assert resp.status_code == 404 and "error" in resp.json()


def test_500_all_models_unavailable(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.script(["503"] * 3)
    body = {"type": "chat", "model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "Hi"}]}
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/json"
    error = resp.json()
    assert error["error"] == "All AI models are currently unavailable. Please try again later."
    assert isinstance(error["details"], str) and "llama-3.1-8b-instant" in error["details"]


def test_a_401_stops_the_chain(http: httpx.Client, upstream: FakeUpstream) -> None:
    """Last of the chat tests: the rejected key is set aside (re-probed after key_recheck_after)."""
    upstream.script(["401"])
    body = {"type": "chat", "model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "Hi"}]}
    resp = http.post("/", headers=JSON, json=body)
    assert resp.status_code == 500
    assert resp.json()["error"] == "All AI models are currently unavailable. Please try again later."
    assert chat_requests(upstream) == ["llama-3.1-8b-instant"]  # no other model was tried


def test_keyless_callers_are_limited_per_ip(http: httpx.Client) -> None:
    """auth: none and no limits.per_ip: 30 requests a minute per address (seed 000's Groq rate)."""
    statuses = []
    for _ in range(62):  # a minute boundary may reset the window once
        resp = http.post("/", headers=JSON, json={"type": "image", "model": SDXL, "inputs": "x"})
        statuses.append(resp.status_code)
        if resp.status_code == 429:
            assert "error" in resp.json() and int(resp.headers["retry-after"]) >= 1
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
