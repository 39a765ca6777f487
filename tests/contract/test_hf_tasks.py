"""Golden payloads of Hugging Face's task API: what each media task puts on the wire, and how answers read.

Set PORTWAY_UPDATE_GOLDEN=1 to rewrite the files after an intended change; review the diff.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from portway.http.client import Transport
from portway.providers import hf_tasks
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.huggingface import DEFAULT_INFERENCE_URL, HuggingFaceProvider

GOLDEN = Path(__file__).parent / "golden"
PNG = b"\x89PNG\r\n\x1a\n-image-"
MASK = b"\x89PNG\r\n\x1a\n-mask-"


def _check(name: str, actual: Any) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing golden file {path.name}: run with PORTWAY_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(path.read_text())


def _provider(**options: Any) -> HuggingFaceProvider:
    settings = ProviderSettings("hf", "huggingface", "https://router.huggingface.co/v1", options=options)
    return HuggingFaceProvider(settings, Transport())


def _wire(body: bytes, content_type: str, model: str = "org/model") -> dict[str, Any]:
    req = _provider().task_request(model, "hf_secret", body, content_type)
    shown: Any = json.loads(body) if content_type == hf_tasks.JSON else {"raw_bytes": len(body)}
    return {"method": req.method, "url": req.url, "headers": req.headers, "body": shown}


WIRES = {
    "embeddings": lambda: _wire(
        hf_tasks.build_embeddings(hf_tasks.embeddings_texts({"input": "one text"}, lambda: None)),
        hf_tasks.JSON,
    ),
    "text_to_image": lambda: _wire(
        hf_tasks.build_text_to_image(
            {
                "prompt": "a red fox",
                "n": 1,
                "size": "768x512",
                "quality": "high",
                "response_format": "url",
                "negative_prompt": "blurry",
                "num_inference_steps": 20,
                "guidance_scale": 7.5,
                "seed": 42,
            }
        ),
        hf_tasks.JSON,
    ),
    "image_to_image": lambda: _wire(
        hf_tasks.build_image_to_image({"prompt": "paint it blue", "size": "256x256", "seed": 1}, PNG, MASK),
        hf_tasks.JSON,
    ),
    "speech": lambda: _wire(hf_tasks.build_speech({"input": "Hello.", "voice": "alloy"}), hf_tasks.JSON),
    "asr_raw": lambda: _wire(b"RIFF....WAVE", "audio/wav"),
    "asr_timestamps": lambda: _wire(hf_tasks.build_asr_json(b"RIFF....WAVE"), hf_tasks.JSON),
    "text_to_video": lambda: _wire(
        hf_tasks.build_video({"prompt": "waves", "seconds": "8", "negative_prompt": "text", "seed": 3}, None),
        hf_tasks.JSON,
    ),
    "image_to_video": lambda: _wire(hf_tasks.build_video({"prompt": "make it move"}, PNG), hf_tasks.JSON),
}


@pytest.mark.parametrize("name", sorted(WIRES))
def test_task_request(name: str) -> None:
    _check(f"hf_task_{name}_request", WIRES[name]())


def test_inference_url_is_an_option_and_chat_keeps_base_url() -> None:
    assert _provider().task_request("m", None, b"", "x").url == DEFAULT_INFERENCE_URL + "/models/m"
    custom = _provider(inference_url="http://127.0.0.1:9/hf/")
    req = custom.task_request("org/m", None, b"", "x")
    assert req.url == "http://127.0.0.1:9/hf/models/org/m" and "Authorization" not in req.headers
    with pytest.raises(ValueError, match="inference_ur"):
        _provider(inference_ur="typo")


# --- answers --------------------------------------------------------------------------------------------


def test_embeddings_answer_becomes_openais_list() -> None:
    texts = ["a", "bb"]
    body, tokens = hf_tasks.parse_embeddings(b"[[3, 4], [0, 2]]", texts, {}, "org/embed")
    _check("hf_task_embeddings_response", json.loads(body))
    assert tokens == 2


def test_embeddings_shapes_dimensions_and_base64() -> None:
    # a bare vector for one text, token-level output mean-pooled, truncation re-normalized
    one, _ = hf_tasks.parse_embeddings(b"[3, 4]", ["x"], {}, "m")
    assert json.loads(one)["data"][0]["embedding"] == [0.6, 0.8]
    pooled, _ = hf_tasks.parse_embeddings(b"[[[1, 0], [0, 1]]]", ["x"], {"dimensions": 1}, "m")
    assert json.loads(pooled)["data"][0]["embedding"] == [1.0]
    packed, _ = hf_tasks.parse_embeddings(b"[[3, 4]]", ["x"], {"encoding_format": "base64"}, "m")
    raw = base64.b64decode(json.loads(packed)["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == pytest.approx((0.6, 0.8))
    for bad in (b"not json", b"[[1], [2]]", b'{"error": 1}', b'[["x"]]'):
        with pytest.raises(UpstreamFailure) as caught:
            hf_tasks.parse_embeddings(bad, ["x"], {}, "m")
        assert caught.value.kind is FailureKind.BAD_RESPONSE


def test_embeddings_input_is_checked_and_token_arrays_need_a_decoder() -> None:
    assert hf_tasks.embeddings_texts({"input": ["a", "b"]}, lambda: None) == ["a", "b"]
    for payload, param in (({"input": []}, "input"), ({"input": [[1, 2]]}, "input"), ({}, "input")):
        with pytest.raises(UpstreamFailure) as caught:
            hf_tasks.embeddings_texts(payload, lambda: None)
        assert (caught.value.kind, caught.value.param) == (FailureKind.BAD_REQUEST, param)

    class Decoder:
        def decode_bytes(self, tokens: list[int]) -> bytes:
            return "-".join(map(str, tokens)).encode()

    assert hf_tasks.embeddings_texts({"input": [[1, 2], [3]]}, Decoder) == ["1-2", "3"]
    with pytest.raises(UpstreamFailure) as caught:
        hf_tasks.parse_embeddings(b"[[1]]", ["x"], {"encoding_format": "int8"}, "m")
    assert caught.value.param == "encoding_format"


def test_image_answers() -> None:
    assert hf_tasks.parse_binary("image/png", PNG, "image") == "image/png"
    body = json.loads(hf_tasks.images_body([PNG, MASK], created=1700000000))
    _check("hf_task_images_response", body)
    for content_type, data in (("application/json", b"{}"), ("image/png", b""), (None, PNG)):
        with pytest.raises(UpstreamFailure) as caught:
            hf_tasks.parse_binary(content_type, data, "image")
        assert caught.value.kind is FailureKind.BAD_RESPONSE
    with pytest.raises(UpstreamFailure) as caught:
        hf_tasks.build_text_to_image({"prompt": "x", "size": "big"})
    assert (caught.value.kind, caught.value.param) == (FailureKind.BAD_REQUEST, "size")


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_answer_renders_each_format(fmt: str) -> None:
    answer = {"text": " hello there world", "chunks": [
        {"text": " hello there", "timestamp": [0.0, 1.25]},
        {"text": " world", "timestamp": [1.25, None]},
    ]}  # fmt: skip
    body, content_type, seconds = hf_tasks.parse_transcription(
        json.dumps(answer).encode(), {"response_format": fmt, "language": "en"}, 2.5
    )
    assert seconds == 2.5
    shown = json.loads(body) if content_type == hf_tasks.JSON else body.decode()
    _check(f"hf_task_transcription_{fmt}_response", {"content_type": content_type, "body": shown})


def test_transcription_without_chunks_or_length() -> None:
    body, _, seconds = hf_tasks.parse_transcription(b'{"text": "hi"}', {"response_format": "srt"}, None)
    assert seconds == 0.0 and body.decode().startswith("1\n00:00:00,000 --> 00:00:00,000\nhi")
    with pytest.raises(UpstreamFailure) as caught:
        hf_tasks.parse_transcription(b'{"texts": []}', {}, None)
    assert caught.value.kind is FailureKind.BAD_RESPONSE


def test_loading_answer_is_recognised() -> None:
    assert (
        hf_tasks.loading_wait(503, b'{"error": "Model x is currently loading", "estimated_time": 20.5}')
        == 20.5
    )
    assert hf_tasks.loading_wait(503, b'{"error": "overloaded"}') is None
    assert hf_tasks.loading_wait(500, b'{"estimated_time": 3}') is None
    assert hf_tasks.loading_wait(503, b'{"estimated_time": true}') is None
    assert hf_tasks.loading_wait(503, b"<html>") is None


def test_video_seconds() -> None:
    assert hf_tasks.video_seconds({"seconds": "8"}) == 8.0
    assert hf_tasks.video_seconds({}) == 4.0
    assert hf_tasks.video_seconds({"seconds": "soon"}) == 0.0
