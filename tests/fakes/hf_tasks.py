"""Hugging Face task answers for the fake upstream (`POST /hf-inference/models/{model}`).

HF's real router picks the task from the model's pipeline; the fake picks it from a word in the model id:
`embed` feature-extraction, `tti` text-to-image, `i2i` image-to-image, `tts` text-to-speech, `asr`
automatic-speech-recognition, `ttv` text-to-video. Answers depend only on the request, and the binary ones
are real files of their type (a PNG, a WAV), so tests can decode what comes back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import struct
import zlib
from typing import Any

EMBED_DIM = 8
VIDEO_BYTES = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 32  # an mp4's first box
HfAnswer = tuple[int, str, bytes]  # status, content type, body


def task_of(model: str) -> str | None:
    for word, task in (
        ("embed", "feature-extraction"),
        ("tti", "text-to-image"),
        ("i2i", "image-to-image"),
        ("tts", "text-to-speech"),
        ("asr", "automatic-speech-recognition"),
        ("ttv", "text-to-video"),
    ):
        if word in model:
            return task
    return None


def loading(model: str, seconds: float) -> HfAnswer:
    body = {"error": f"Model {model} is currently loading", "estimated_time": seconds}
    return 503, "application/json", json.dumps(body).encode()


def answer(model: str, content_type: str, raw: bytes) -> HfAnswer:
    task = task_of(model.split("@", 1)[0])
    if task is None:
        return _error(404, f"Model {model} does not exist")
    if task == "automatic-speech-recognition" and not content_type.startswith("application/json"):
        return _json({"text": f"fake transcription of {len(raw)} bytes"})  # the audio file as the body
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict) or "inputs" not in body:
        return _error(400, 'missing "inputs"')
    return _TASKS[task](body)


def vector(text: str) -> list[float]:
    """A deterministic vector of EMBED_DIM values, not unit length (portway normalizes)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 16 for b in digest[:EMBED_DIM]]


def _embed(body: dict[str, Any]) -> HfAnswer:
    inputs = body["inputs"]
    if isinstance(inputs, str):
        return _json(vector(inputs))  # a bare string gets a bare vector, as HF answers
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        return _error(400, "inputs must be a string or a list of strings")
    return _json([vector(t) for t in inputs])


def _text_to_image(body: dict[str, Any]) -> HfAnswer:
    params = body.get("parameters") or {}
    seed = json.dumps([body["inputs"], params.get("seed")]).encode()
    return 200, "image/png", png(int(params.get("width", 2)) % 7 + 1, 1, hashlib.sha256(seed).digest()[:3])


def _image_to_image(body: dict[str, Any]) -> HfAnswer:
    try:
        image = base64.b64decode(body["inputs"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        return _error(400, "inputs must be a base64 image")
    if not image.startswith(b"\x89PNG"):
        return _error(400, "inputs is not an image")
    params = body.get("parameters") or {}
    colour = b"\x00\xff\x00" if params.get("mask_image") else b"\xff\x00\x00"
    return 200, "image/png", png(1, 1, colour)


def _tts(body: dict[str, Any]) -> HfAnswer:
    text = body["inputs"]
    if not isinstance(text, str) or not text:
        return _error(400, "inputs must be text")
    return 200, "audio/wav", wav(0.05 * len(text))


def _asr(body: dict[str, Any]) -> HfAnswer:
    try:
        audio = base64.b64decode(body["inputs"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        return _error(400, "inputs must be base64 audio")
    text = f"fake transcription of {len(audio)} bytes"
    if not (body.get("parameters") or {}).get("return_timestamps"):
        return _json({"text": text})
    half = text.split(" of ")
    chunks = [
        {"text": half[0], "timestamp": [0.0, 1.0]},
        {"text": " of " + half[1], "timestamp": [1.0, None]},
    ]
    return _json({"text": text, "chunks": chunks})


def _ttv(body: dict[str, Any]) -> HfAnswer:
    return 200, "video/mp4", VIDEO_BYTES


_TASKS = {
    "feature-extraction": _embed,
    "text-to-image": _text_to_image,
    "image-to-image": _image_to_image,
    "text-to-speech": _tts,
    "automatic-speech-recognition": _asr,
    "text-to-video": _ttv,
}


def _json(obj: Any) -> HfAnswer:
    return 200, "application/json", json.dumps(obj).encode()


def _error(status: int, message: str) -> HfAnswer:
    return status, "application/json", json.dumps({"error": message}).encode()


def png(width: int, height: int, rgb: bytes) -> bytes:
    """A valid RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV holding a 440 Hz tone."""
    frames = max(1, int(seconds * rate))
    pcm = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(frames)
    )
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
