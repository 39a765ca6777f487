"""Golden cases for the OpenAI-compatible media adapter: what each task puts on the wire, how answers read.

Wire requests are compared with files in golden/ (PORTWAY_UPDATE_GOLDEN=1 rewrites them; review the diff).
A multipart body is shown with each file part as `<file NAME SIZE>`: the bytes come from disk when sent.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from portway.http.client import FilePart, StreamedBody, Transport
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.media import MediaCall, Task, Upload
from portway.providers.openai_compat import OpenAICompatProvider
from portway.providers.openai_media import audio_seconds, build_media_request, parse_media_response

GOLDEN = Path(__file__).parent / "golden"
BOUNDARY = "portway-boundary"


def provider() -> OpenAICompatProvider:
    settings = ProviderSettings("oa", "openai", "https://api.openai.com/v1/", headers={"X-Title": "portway"})
    return OpenAICompatProvider(settings, Transport())


def uploads(tmp_path: Path, *specs: tuple[str, str, str, bytes]) -> list[Upload]:
    out = []
    for i, (field, filename, content_type, data) in enumerate(specs):
        path = tmp_path / f"spool-{i}"
        path.write_bytes(data)
        out.append(Upload(field, filename, content_type, path, len(data)))
    return out


def render(body: bytes | StreamedBody) -> Any:
    if isinstance(body, bytes):
        return json.loads(body)
    text = "".join(
        p.decode() if isinstance(p, bytes) else f"<file {p.path.name} {p.size}>" for p in body.parts
    )
    return {"length": len(body), "multipart": text.split("\r\n")}


def wire(call: MediaCall) -> dict[str, Any]:
    req = build_media_request(provider(), call, boundary=BOUNDARY)
    return {"method": req.method, "url": req.url, "headers": req.headers, "body": render(req.body)}


def check(name: str, actual: dict[str, Any]) -> None:
    path = GOLDEN / f"openai_media_{name}.json"
    if os.environ.get("PORTWAY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert path.exists(), f"missing golden file {path.name}: run with PORTWAY_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(path.read_text())


JSON_CASES: dict[str, tuple[Task, dict[str, Any], str]] = {
    "embeddings": (
        Task.EMBEDDINGS,
        {
            "model": "text-embedding-3-small",
            "models": ["b"],
            "input": ["a", "b"],
            "encoding_format": "base64",
            "dimensions": 256,
            "user": "u-1",
        },
        "text-embedding-3-large",
    ),
    "image_generation": (
        Task.IMAGE_GENERATION,
        {
            "model": "img",
            "prompt": "an otter",
            "n": 2,
            "size": "512x512",
            "response_format": "url",
            "quality": "hd",
            "negative_prompt": "blur",
            "seed": 7,
            "style": None,
        },
        "dall-e-3",
    ),
    "image_generation_gpt_image": (
        Task.IMAGE_GENERATION,
        {"model": "img", "prompt": "an otter", "response_format": "url", "output_format": "webp"},
        "gpt-image-1",
    ),
    "speech": (
        Task.SPEECH,
        {"model": "tts-1", "input": "Hello there", "voice": "alloy", "response_format": "wav", "speed": 1.25},
        "gpt-4o-mini-tts",
    ),
}


@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_json_task_request(name: str) -> None:
    task, payload, model = JSON_CASES[name]
    check(f"{name}_request", wire(MediaCall(task, payload, model, "sk-upstream", 10)))


def test_image_edit_request(tmp_path: Path) -> None:
    files = uploads(
        tmp_path,
        ("image[]", "otter.png", "image/png", b"\x89PNG" + b"a" * 96),
        ("image[]", 'we"ird\r\nname.png', "image/png", b"\x89PNG" + b"b" * 46),
        ("mask", "mask.png", "image/png\r\nX-Injected: 1", b"\x89PNG" + b"m" * 10),
    )
    payload = {"model": "edit", "prompt": "add a hat", "n": 1, "size": "256x256", "response_format": "url"}
    check(
        "image_edit_request", wire(MediaCall(Task.IMAGE_EDIT, payload, "dall-e-2", "sk-upstream", 10, files))
    )


@pytest.mark.parametrize("task", [Task.TRANSCRIPTION, Task.TRANSLATION])
def test_audio_upload_request(task: Task, tmp_path: Path) -> None:
    files = uploads(tmp_path, ("file", "talk.wav", "audio/wav", b"RIFF" + b"\0" * 1020))
    payload = {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "language": "en",
        "temperature": 0.0,
        "timestamp_granularities": ["word", "segment"],
        "stream": False,
        "chunking_strategy": {"type": "server_vad"},
    }
    check(f"{task.value}_request", wire(MediaCall(task, payload, "whisper-large-v3", None, 10, files)))


def test_multipart_body_parses_as_form_data_with_the_files_bytes(tmp_path: Path) -> None:
    data = os.urandom(5000)
    files = uploads(tmp_path, ("file", "é talk.wav", "audio/wav", data))
    req = build_media_request(
        provider(), MediaCall(Task.TRANSCRIPTION, {"prompt": "ünïcode"}, "w", None, 10, files)
    )
    assert isinstance(req.body, StreamedBody)
    raw = b"".join(p if isinstance(p, bytes) else _read(p) for p in req.body.parts)
    assert len(raw) == len(req.body)  # Content-Length is the sum of the parts
    head = f"Content-Type: {req.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["prompt"].get_payload(decode=True) == "ünïcode".encode()  # fields are UTF-8
    assert parts["model"].get_payload(decode=True) == b"w"
    assert parts["file"].get_payload(decode=True) == data and parts["file"].get_filename() == "é talk.wav"
    assert req.headers["Content-Type"].startswith("multipart/form-data; boundary=portway-")


def _read(part: FilePart) -> bytes:
    return part.path.read_bytes()[: part.size]


# -- parsing ------------------------------------------------------------------------------------------------


def call(task: Task, payload: dict[str, Any] | None = None) -> MediaCall:
    return MediaCall(task, payload or {}, "asked-model", None, 10)


def test_embeddings_answer_is_kept_byte_for_byte_with_its_tokens() -> None:
    body = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],'
        b'"model":"text-embedding-3-small","usage":{"prompt_tokens":9,"total_tokens":9}}'
    )
    result = parse_media_response(call(Task.EMBEDDINGS), "application/json", body)
    assert result.body == body and result.content_type == "application/json"
    assert (result.units.prompt_tokens, result.served_model) == (9, "text-embedding-3-small")


def test_embeddings_without_usage_count_zero_tokens() -> None:
    result = parse_media_response(call(Task.EMBEDDINGS), "application/json", b'{"data":[]}')
    assert (result.units.prompt_tokens, result.served_model) == (0, "asked-model")


@pytest.mark.parametrize("body", [b"<html>", b"[1,2]", b'{"object":"list"}', b'{"data":{}}'])
@pytest.mark.parametrize("task", [Task.EMBEDDINGS, Task.IMAGE_GENERATION, Task.IMAGE_EDIT])
def test_an_answer_of_the_wrong_shape_is_a_bad_response(task: Task, body: bytes) -> None:
    with pytest.raises(UpstreamFailure) as err:
        parse_media_response(call(task), "application/json", body)
    assert err.value.kind is FailureKind.BAD_RESPONSE


def test_images_count_and_size() -> None:
    body = b'{"created":1,"data":[{"b64_json":"AAAA"},{"b64_json":"BBBB"},{"b64_json":"CCCC"}]}'
    result = parse_media_response(call(Task.IMAGE_EDIT, {"size": "256x256"}), "application/json", body)
    assert (result.units.images, result.units.image_size, result.body) == (3, "256x256", body)


SRT = b"1\n00:00:00,000 --> 00:00:01,500\nHello\n\n2\n00:00:01,500 --> 00:01:02,250\nthere\n"
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello\n\n01:00:01.500 --> 01:00:03.125\nthere\n\n"


@pytest.mark.parametrize(
    ("fmt", "content_type", "body", "seconds"),
    [
        ("json", "application/json", b'{"text":"hi","usage":{"type":"duration","seconds":4}}', 4.0),
        (None, "application/json", b'{"text":"hi","usage":{"type":"tokens","input_tokens":5}}', 0.0),
        ("json", "application/json", b'{"text":"hi"}', 0.0),
        ("verbose_json", "application/json", b'{"text":"hi","duration":3.25,"segments":[]}', 3.25),
        ("srt", "text/plain", SRT, 62.25),
        ("vtt", "text/vtt", VTT, 3603.125),
        ("text", "text/plain", b"hi\n", 0.0),
    ],
)
def test_transcription_seconds(fmt: str | None, content_type: str, body: bytes, seconds: float) -> None:
    result = parse_media_response(call(Task.TRANSCRIPTION, {"response_format": fmt}), content_type, body)
    assert result.units.audio_seconds == pytest.approx(seconds)
    assert (result.body, result.content_type) == (body, content_type)


@pytest.mark.parametrize("body", [b"plain words", b'{"segments":[]}'])
def test_a_json_transcription_that_is_not_one_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(UpstreamFailure) as err:
        audio_seconds(body, "application/json", "json")
    assert err.value.kind is FailureKind.BAD_RESPONSE


def test_a_transcription_without_content_type_gets_its_formats() -> None:
    text = parse_media_response(call(Task.TRANSLATION, {"response_format": "text"}), "", b"hi\n")
    js = parse_media_response(call(Task.TRANSLATION), "", b'{"text":"hi"}')
    assert (text.content_type, js.content_type) == ("text/plain; charset=utf-8", "application/json")


def test_speech_units_and_default_type() -> None:
    result = parse_media_response(call(Task.SPEECH, {"input": "héllo"}), "", b"ID3...")
    assert (result.units.characters, result.content_type) == (5, "audio/mpeg")
