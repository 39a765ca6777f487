"""Hugging Face's task API (`POST {inference_url}/models/{model}`): pure request builders and parsers.

Each media task of OpenAI's API maps onto one Hugging Face task; the shapes follow HF's task specs
(`@huggingface/tasks` `spec/input.json` / `output.json`):

  EMBEDDINGS        feature-extraction  {"inputs": [str, ...], "normalize": true} -> [[float, ...], ...]
  IMAGE_GENERATION  text-to-image       {"inputs": prompt, "parameters": {...}} -> image bytes
  IMAGE_EDIT        image-to-image      {"inputs": base64 image, "parameters": {"prompt", ...}} -> image bytes
  SPEECH            text-to-speech      {"inputs": text} -> audio bytes
  TRANSCRIPTION     automatic-speech-recognition: the audio file itself as the body (its Content-Type);
                    with `return_timestamps` (verbose_json, srt, vtt) {"inputs": base64 audio, "parameters":
                    {"return_timestamps": true}} -> {"text", "chunks": [{"text", "timestamp": [start, end]}]}
  VIDEO             text-to-video       {"inputs": prompt, "parameters": {...}} -> video bytes (image-to-video
                    when an `input_reference` image is uploaded)

Inpainting has no task of its own at HF: the mask travels as `parameters.mask_image` (base64), the name
diffusers' inpainting pipelines take, and models without a mask input ignore it.
Every function here is pure (bytes in, bytes out); the provider does the IO.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any

import orjson

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local.embeddings import embeddings_body, normalize_input, truncate
from portway.providers.local.engine import MediaInputError
from portway.providers.local.transcription import Segment, Transcription, render
from portway.providers.media import Task

HF_TASKS: dict[Task, str] = {
    Task.EMBEDDINGS: "feature-extraction",
    Task.IMAGE_GENERATION: "text-to-image",
    Task.IMAGE_EDIT: "image-to-image",
    Task.SPEECH: "text-to-speech",
    Task.TRANSCRIPTION: "automatic-speech-recognition",
    Task.VIDEO: "text-to-video",
}
# OpenAI request fields that are diffusion knobs HF takes as `parameters` of the same name (seed 002's knobs).
DIFFUSION_KNOBS = ("negative_prompt", "num_inference_steps", "guidance_scale", "seed")
VIDEO_KNOBS = (*DIFFUSION_KNOBS, "num_frames")
TIMESTAMP_FORMATS = frozenset({"verbose_json", "srt", "vtt"})
JSON = "application/json"


def bad_request(param: str, message: str) -> UpstreamFailure:
    return UpstreamFailure(
        FailureKind.BAD_REQUEST, message, status=400, error_code="validation_error", param=param
    )


def bad_response(message: str) -> UpstreamFailure:
    return UpstreamFailure(FailureKind.BAD_RESPONSE, f"Hugging Face answer: {message}")


# --- loading ------------------------------------------------------------------------------------------


def loading_wait(status: int, body: bytes) -> float | None:
    """Seconds HF expects a cold model to need (503 with `estimated_time`), or None for any other answer."""
    if status != 503:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    wait = obj.get("estimated_time") if isinstance(obj, dict) else None
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) or wait < 0:
        return None
    return float(wait)


# --- embeddings ---------------------------------------------------------------------------------------


def embeddings_texts(payload: dict[str, Any], decoder_of: Callable[[], Any | None]) -> list[str]:
    """OpenAI's `input` as the list of texts HF embeds; token arrays are decoded with cl100k (HF takes text).
    `decoder_of` is only called for token arrays: loading the cl100k table costs time text never needs."""
    try:
        items = normalize_input(payload.get("input"))
    except MediaInputError as exc:
        raise bad_request(exc.param, exc.message) from None
    if not items or isinstance(items[0], str):
        return items  # type: ignore[return-value]
    decoder = decoder_of()
    if decoder is None:
        raise bad_request("input", "token arrays need the bpe-openai package here; send text instead")
    try:
        return [bytes(decoder.decode_bytes(t)).decode("utf-8", errors="replace") for t in items]
    except (KeyError, ValueError):
        raise bad_request("input", "input holds a token id outside OpenAI's cl100k_base") from None


def build_embeddings(texts: list[str]) -> bytes:
    # Always a list, so the answer is always one vector per text (a bare string gets a bare vector back).
    return orjson.dumps({"inputs": texts, "normalize": True})


def parse_embeddings(body: bytes, texts: list[str], payload: dict[str, Any], model: str) -> tuple[bytes, int]:
    """OpenAI's embeddings list and its prompt tokens (estimated: HF reports none)."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_response("feature-extraction sent a body that is not JSON") from None
    if len(texts) == 1 and _is_vector(raw):
        raw = [raw]
    if not isinstance(raw, list) or len(raw) != len(texts):
        raise bad_response("feature-extraction sent no vector per input")
    dimensions = payload.get("dimensions")
    vectors = [
        truncate(_unit(_pooled(row)), dimensions if isinstance(dimensions, int) else None) for row in raw
    ]
    tokens = sum(estimate_tokens(t) for t in texts)
    try:
        return embeddings_body(vectors, model, tokens, payload.get("encoding_format") or "float"), tokens
    except MediaInputError as exc:
        raise bad_request(exc.param, exc.message) from None


def estimate_tokens(text: str) -> int:
    """~4 characters a token, OpenAI's rule of thumb for English: HF's feature-extraction counts nothing."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _is_vector(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_number(x) for x in value)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _pooled(row: Any) -> list[float]:
    """A sentence vector; a model without pooling answers one vector per token: mean-pool them."""
    if _is_vector(row):
        return [float(x) for x in row]
    if isinstance(row, list) and row and all(_is_vector(t) for t in row):
        width = len(row[0])
        if all(len(t) == width for t in row):
            return [sum(t[i] for t in row) / len(row) for i in range(width)]
    raise bad_response("feature-extraction sent something that is not a vector")


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


# --- images -------------------------------------------------------------------------------------------


def parse_size(size: Any, param: str = "size") -> tuple[int, int] | None:
    """OpenAI's "WIDTHxHEIGHT" (None for absent or "auto")."""
    if size is None or size == "auto":
        return None
    if isinstance(size, str):
        w, sep, h = size.lower().partition("x")
        if sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0:
            return int(w), int(h)
    raise bad_request(param, "size must look like 1024x1024")


def _knobs(payload: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: payload[k] for k in names if payload.get(k) is not None}


def build_text_to_image(payload: dict[str, Any]) -> bytes:
    params = _knobs(payload, DIFFUSION_KNOBS)
    if (size := parse_size(payload.get("size"))) is not None:
        params["width"], params["height"] = size
    return orjson.dumps({"inputs": payload.get("prompt", ""), "parameters": params})


def build_image_to_image(payload: dict[str, Any], image: bytes, mask: bytes | None) -> bytes:
    params = _knobs(payload, DIFFUSION_KNOBS)
    if payload.get("prompt"):
        params["prompt"] = payload["prompt"]
    if (size := parse_size(payload.get("size"))) is not None:
        params["target_size"] = {"width": size[0], "height": size[1]}
    if mask is not None:
        params["mask_image"] = _b64(mask)
    return orjson.dumps({"inputs": _b64(image), "parameters": params})


def parse_binary(content_type: str | None, body: bytes, kind: str) -> str:
    """The answer's media type when it is `kind` ("image", "audio", "video") bytes; BAD_RESPONSE if not."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media.startswith(kind + "/") and not (kind == "video" and media == "application/octet-stream"):
        raise bad_response(f"expected {kind} bytes, got {media or 'no content type'}")
    if not body:
        raise bad_response(f"empty {kind}")
    return media


def images_body(images: list[bytes], created: int | None = None) -> bytes:
    """OpenAI's images answer; providers always hand back b64_json (the service signs URLs)."""
    return orjson.dumps(
        {
            "created": int(time.time()) if created is None else created,
            "data": [{"b64_json": _b64(i)} for i in images],
        }
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- speech -------------------------------------------------------------------------------------------


def build_speech(payload: dict[str, Any]) -> bytes:
    text = payload.get("input")
    if not isinstance(text, str) or not text.strip():
        raise bad_request("input", "input must be a non-empty string")
    return orjson.dumps({"inputs": text})


# --- transcription ------------------------------------------------------------------------------------


def wants_timestamps(payload: dict[str, Any]) -> bool:
    return payload.get("response_format") in TIMESTAMP_FORMATS


def build_asr_json(audio: bytes) -> bytes:
    """With parameters HF takes the audio base64 in JSON (the raw-bytes body allows none)."""
    return orjson.dumps({"inputs": _b64(audio), "parameters": {"return_timestamps": True}})


def parse_transcription(
    body: bytes, payload: dict[str, Any], duration: float | None, task: str = "transcribe"
) -> tuple[bytes, str, float]:
    """HF's {"text", "chunks"?} rendered in the payload's response_format; also the audio's seconds."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_response("automatic-speech-recognition sent a body that is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise bad_response('automatic-speech-recognition sent no "text"')
    segments = _segments(obj.get("chunks"), duration)
    if duration is None:
        duration = segments[-1].end if segments else 0.0
    if not segments and obj["text"].strip():
        segments = (Segment(0, 0.0, duration, obj["text"]),)
    language = payload.get("language") if isinstance(payload.get("language"), str) else None
    result = Transcription(obj["text"].strip(), language or "unknown", duration, segments)
    try:
        rendered, content_type = render(result, payload.get("response_format"), task=task)
    except MediaInputError as exc:
        raise bad_request(exc.param, exc.message) from None
    return rendered, content_type, duration


def _segments(chunks: Any, duration: float | None) -> tuple[Segment, ...]:
    if not isinstance(chunks, list):
        return ()
    found: list[Segment] = []
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            continue
        stamp = chunk.get("timestamp")
        if not isinstance(stamp, list | tuple) or len(stamp) != 2 or not _is_number(stamp[0]):
            continue
        start = float(stamp[0])
        # HF leaves the last chunk's end open (null): it ends with the audio.
        end = float(stamp[1]) if _is_number(stamp[1]) else max(start, duration or start)
        found.append(Segment(len(found), start, end, chunk["text"]))
    return tuple(found)


# --- video --------------------------------------------------------------------------------------------


def build_video(payload: dict[str, Any], image: bytes | None) -> bytes:
    """text-to-video, or image-to-video when a reference image is given (the prompt then a parameter)."""
    params = _knobs(payload, VIDEO_KNOBS)
    prompt = payload.get("prompt", "")
    if image is None:
        negative = params.get("negative_prompt")
        if isinstance(negative, str):
            params["negative_prompt"] = [negative]  # text-to-video takes a list of them
        return orjson.dumps({"inputs": prompt, "parameters": params})
    if prompt:
        params["prompt"] = prompt
    return orjson.dumps({"inputs": _b64(image), "parameters": params})


def video_seconds(payload: dict[str, Any]) -> float:
    """OpenAI's `seconds` (a string: "4", "8", "12"; 4 by default), what pricing charges for."""
    raw = payload.get("seconds", 4)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
