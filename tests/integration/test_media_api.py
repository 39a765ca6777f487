"""The media endpoints through a running portway with the official `openai` SDK, against the local models:
embeddings, speech, transcription of that speech, one usage record each; and what portway refuses itself
(415, 413, empty input, n out of range, a mask of another size, an undecodable image, a model that cannot
serve the endpoint), with the uploads' temporary files removed after a request and after a client that
hung up mid-upload."""

from __future__ import annotations

import io
import socket
import sqlite3
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

UPLOAD_CAP = 1024 * 1024  # server.max_upload_bytes here: the 413 case stays cheap


def config(upstream: FakeUpstream) -> dict[str, Any]:
    """One gateway for the module: the local models, and two providers on the fake upstream."""
    fake = {"type": "openai", "base_url": upstream.base_url}
    return {
        # The deadline stays the default (60 s): the first local call loads its model (torch) inside it.
        "routing": {"backoff_base": 0.01, "backoff_max": 0.02},
        "providers": {
            "local": {"type": "local"},
            "m1": {**fake, "api_keys": ["k-m1"]},
            "m2": {**fake, "api_keys": ["k-m2"]},
        },
        "models": {
            "emb": ["local/all-minilm-l6-v2"],
            "voice": ["local/piper-joe"],
            "ears": ["local/whisper-tiny.en"],
            "pics": ["m1/img-model"],
            "emb-chain": ["m1/emb@500", "m2/emb-second"],
            "slow-voice": ["m1/tts@slowchunks:0.3"],
            "stuck": ["m1/emb@hang"],
        },
        "server": {"max_upload_bytes": UPLOAD_CAP},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("media"), config(upstream))
    yield proc
    proc.stop()


@pytest.fixture
def gw_up(gw: PortwayProcess) -> PortwayProcess:
    """The same gateway, for the tests through the fake upstream (their aliases are m1/m2's)."""
    return gw


@pytest.fixture
def client(gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=120)


def rows(
    gw: PortwayProcess, endpoint: str, count: int = 1, timeout: float = 5.0, *, model: str | None = None
) -> list[dict[str, Any]]:
    """The request log's rows for `endpoint` (and requested `model`, when given: the module's tests share
    one gateway), once the batched writer has flushed `count` of them."""
    until = time.monotonic() + timeout
    sql, args = "SELECT * FROM request_log WHERE endpoint = ?", [endpoint]
    if model is not None:
        sql, args = sql + " AND requested_model = ?", [endpoint, model]
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            found = [dict(r) for r in con.execute(sql, args)]
        except sqlite3.OperationalError:
            found = []
        finally:
            con.close()
        if len(found) >= count:
            return found
        assert time.monotonic() < until, f"{len(found)} request_log rows for {endpoint}, wanted {count}"
        time.sleep(0.02)


def uploads_left(gw: PortwayProcess) -> list[Path]:
    root = gw.data_dir / "uploads"
    return list(root.rglob("*")) if root.exists() else []


def wait_uploads_removed(gw: PortwayProcess, timeout: float = 5.0) -> None:
    until = time.monotonic() + timeout
    while uploads_left(gw):
        assert time.monotonic() < until, f"left behind: {uploads_left(gw)}"
        time.sleep(0.01)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 30, 30, 255)).save(out, "PNG")
    return out.getvalue()


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    return dict(body["error"])


# -- the local models ----------------------------------------------------------------------------------


@pytest.mark.local_model
def test_embeddings_local(gw: PortwayProcess, client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Interest rates rose again."]
    reply = client.embeddings.create(model="emb", input=texts)
    assert [len(d.embedding) for d in reply.data] == [384, 384, 384]
    assert reply.usage.prompt_tokens > 0
    (row,) = rows(gw, "embeddings", model="emb")
    assert row["status"] == 200 and row["provider"] == "local" and row["requested_model"] == "emb"
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["bytes_in"] > 0 and row["bytes_out"] > 0


@pytest.mark.local_model
def test_speech_then_transcription_local(gw: PortwayProcess, client: openai.OpenAI) -> None:
    text = "Hello world. The weather is sunny today."
    with client.audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input=text, response_format="wav"
    ) as answer:
        assert answer.headers["content-type"].startswith("audio/")
        audio = answer.read()
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnframes() > w.getframerate() // 2  # at least half a second of speech

    transcript = client.audio.transcriptions.create(model="ears", file=("speech.wav", audio, "audio/wav"))
    words = transcript.text.lower()
    assert "hello" in words and "weather" in words, words

    (speech,) = rows(gw, "speech", model="voice")
    assert speech["status"] == 200 and speech["characters"] == len(text)
    assert speech["bytes_out"] == len(audio)
    (heard,) = rows(gw, "transcription", model="ears")
    assert heard["status"] == 200 and heard["audio_seconds"] > 0.5
    assert heard["bytes_in"] >= len(audio)
    assert uploads_left(gw) == []  # the uploaded audio is gone once answered


# -- refused by portway itself -------------------------------------------------------------------------


def test_model_that_cannot_serve_the_endpoint(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="local/smollm2", prompt="a red square")
    assert error_of(err.value)["code"] == "model_not_supported_for_endpoint"
    assert error_of(err.value)["param"] == "model"


def test_empty_input_list(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="emb", input=[])
    assert error_of(err.value)["param"] == "input"


@pytest.mark.parametrize("n", [0, 11])
def test_n_out_of_range(client: openai.OpenAI, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="local/smollm2", prompt="a red square", n=n)
    assert error_of(err.value)["param"] == "n"


def test_mask_of_another_size(gw: PortwayProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            model="local/smollm2",
            image=("in.png", png(16, 16), "image/png"),
            mask=("mask.png", png(8, 8), "image/png"),
            prompt="make it blue",
        )
    assert error_of(err.value)["param"] == "mask"
    assert "16x16" in error_of(err.value)["message"]
    assert uploads_left(gw) == []


def test_image_that_does_not_decode(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(
            model="local/smollm2", image=("in.png", b"\x89PNG not really", "image/png"), prompt="blue"
        )
    assert error_of(err.value)["param"] == "image"


def test_wrong_content_types(gw: PortwayProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model="ears", file=("notes.txt", b"hello", "text/plain"))
    assert err.value.status_code == 415
    assert error_of(err.value) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "code": "unsupported_media_type",
        "param": "file",
    }
    # A multipart route sent JSON, and a JSON route sent multipart.
    plain = httpx.post(gw.base_url + "/audio/transcriptions", headers=gw.headers(), json={"model": "ears"})
    assert plain.status_code == 415
    multi = httpx.post(gw.base_url + "/embeddings", headers=gw.headers(), files={"input": ("a", b"x")})
    assert multi.status_code == 415


def test_upload_over_the_cap(gw: PortwayProcess) -> None:
    """Over server.max_upload_bytes (and under the default cap, so it is that setting that refuses)."""
    big = b"\0" * (UPLOAD_CAP + 1)
    answer = httpx.post(
        gw.base_url + "/audio/transcriptions",
        headers=gw.headers(),
        data={"model": "ears"},
        files={"file": ("big.wav", big, "audio/wav")},
    )
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    # Chunked (no Content-Length): counted as it arrives.
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nears\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(UPLOAD_CAP // 65536 + 2):
            yield b"\0" * 65536

    answer = httpx.post(
        gw.base_url + "/audio/transcriptions",
        headers={**gw.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=chunks(),
    )
    assert answer.status_code == 413
    # BodyLimit answered the moment the cap was passed; the route then finds the client gone and cleans up.
    wait_uploads_removed(gw)


def test_upload_removed_when_the_client_hangs_up(gw: PortwayProcess) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nears\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    request = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {gw.master_key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {UPLOAD_CAP - 1}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        sock.sendall(request + head + b"\1" * 200_000)
        until = time.monotonic() + 5
        while not [p for p in uploads_left(gw) if p.is_file() and p.stat().st_size > 0]:
            assert time.monotonic() < until, "the upload never reached its temporary file"
            time.sleep(0.01)
    finally:
        sock.close()  # mid-upload: most of the declared body never comes
    wait_uploads_removed(gw)


# -- through an OpenAI-compatible upstream (the fake): what the service adds -------------------------------


def test_image_urls_are_signed_links_to_kept_files(gw_up: PortwayProcess) -> None:
    client = openai.OpenAI(base_url=gw_up.base_url, api_key=gw_up.master_key, max_retries=0)
    reply = client.images.generate(model="pics", prompt="a red square", n=2, response_format="url")
    data = reply.data or []
    urls = [d.url or "" for d in data]
    assert len(urls) == 2 and all(u.startswith(gw_up.url + "/v1/files/") for u in urls), urls
    assert all(d.b64_json is None for d in data)
    fetched = httpx.get(urls[0])  # no Authorization: the signature is the credential
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (4, 4)
    # b64_json stays the default, answered as the upstream sent it
    inline = client.images.generate(model="pics", prompt="a red square")
    (item,) = inline.data or []
    assert item.b64_json and item.url is None
    found = rows(gw_up, "image_generation", 2, model="pics")
    assert sorted(r["images"] for r in found) == [1, 2]
    assert all(r["status"] == 200 and r["provider"] == "m1" for r in found)


def test_embeddings_fall_back_to_the_next_target(gw_up: PortwayProcess) -> None:
    client = openai.OpenAI(base_url=gw_up.base_url, api_key=gw_up.master_key, max_retries=0)
    answer = client.embeddings.with_raw_response.create(model="emb-chain", input="hello")
    assert answer.headers["x-portway-provider"] == "m2"
    assert len(answer.parse().data[0].embedding) > 0
    (row,) = rows(gw_up, "embeddings", model="emb-chain")
    assert row["provider"] == "m2" and row["attempts"] >= 2 and row["status"] == 200


def test_speech_client_gone_mid_stream_is_recorded_as_499(gw_up: PortwayProcess) -> None:
    with httpx.stream(
        "POST",
        gw_up.base_url + "/audio/speech",
        headers={**gw_up.headers(), "x-request-id": "speech-gone"},
        json={
            "model": "slow-voice",
            "voice": "alloy",
            "input": "a long sentence " * 20,
            "response_format": "wav",
        },
        timeout=10,
    ) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
        first = next(answer.iter_raw())
        assert first.startswith(b"RIFF")
    # closed after the first chunk, with more still to come
    until = time.monotonic() + 5
    while not (found := [r for r in rows(gw_up, "speech", 0) if r["request_id"] == "speech-gone"]):
        assert time.monotonic() < until, "no row for the speech request"
        time.sleep(0.02)
    (row,) = found
    assert row["status"] == 499 and row["error_code"] == "client_disconnected"
    assert 0 < row["bytes_out"] < 44 + 32_000  # what had gone out before the client left


def test_client_gone_during_the_upstream_call_cancels_it(
    gw_up: PortwayProcess, upstream: FakeUpstream
) -> None:
    """No answer yet (the upstream hangs): the hang-up cancels the call, recorded as 499 and charged."""
    payload = b'{"model": "stuck", "input": "hello"}'
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {gw_up.master_key}\r\nx-request-id: emb-gone\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gw_up.port), timeout=5)
    try:
        sock.sendall(head + payload)
        until = time.monotonic() + 5
        while not [r for r in upstream.requests if r.path == "/v1/embeddings" and r.model == "emb@hang"]:
            assert time.monotonic() < until, "the upstream call never started"
            time.sleep(0.01)
    finally:
        sock.close()
    started = time.monotonic()
    until = started + 3  # well before the 60 s deadline would end the call on its own
    while True:
        found = [r for r in rows(gw_up, "embeddings", 0) if r["request_id"] == "emb-gone"]
        if found:
            break
        assert time.monotonic() < until, "no 499 row: the disconnect did not cancel the call"
        time.sleep(0.02)
    assert found[0]["status"] == 499 and found[0]["error_code"] == "client_disconnected"
    assert found[0]["usage_estimated"] == 1 and found[0]["prompt_tokens"] > 0
