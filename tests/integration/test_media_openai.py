"""`type: openai` media through a running portway to the fake upstream, with the official `openai` SDK.

Every endpoint goes to the same path upstream (embeddings float and base64, image generation and edits
with image and mask, speech streamed as it is produced, transcriptions in every response_format,
translations), fallback across two providers for embeddings and images, and a 10 MiB upload that reaches
the upstream intact without portway's memory growing by its size.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from portway.http.client import Transport
from portway.providers.base import FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.media import MediaCall, Task
from portway.providers.openai_compat import OpenAICompatProvider
from tests.fakes.hf_tasks import wav
from tests.fakes.openai_media import vector
from tests.fakes.upstream import FakeUpstream, RecordedRequest
from tests.integration.server import PortwayProcess

MiB = 1024 * 1024


def config(up: FakeUpstream) -> dict[str, Any]:
    def prov(key: str) -> dict[str, Any]:
        return {"type": "openai", "base_url": up.base_url, "api_keys": [key]}

    return {
        "server": {"max_upload_bytes": 32 * MiB},
        "routing": {"deadline": 10, "first_byte_timeout": 5, "backoff_base": 0.01, "backoff_max": 0.02},
        "providers": {"a": prov("k-a"), "b": prov("k-b")},
        "models": {
            "emb": ["a/text-embedding-3-small"],
            "img": ["a/dall-e-2"],
            "tts": ["a/tts-1"],
            "tts-slow": ["a/tts-1@slowchunks:0.3"],
            "stt": ["a/whisper-1"],
            "emb-fallback": ["a/emb@500", "b/text-embedding-3-small"],
            "img-fallback": ["a/img@500", "b/dall-e-2"],
            "emb-bad": ["a/emb@400", "b/text-embedding-3-small"],
        },
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("media-openai"), config(upstream))
    yield proc
    proc.stop()


@pytest.fixture
def client(gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=30)


def last(up: FakeUpstream, path: str) -> RecordedRequest:
    found = [r for r in up.requests if r.path == path]
    assert found, f"no upstream request to {path}"
    return found[-1]


def png(width: int, height: int, colour: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def log_rows(
    gw: PortwayProcess, endpoint: str, count: int, where: Callable[[dict[str, Any]], bool] = lambda r: True
) -> list[dict[str, Any]]:
    """The request log's rows of `endpoint` that match `where`, once there are `count` of them (rows are
    written in the background: an earlier test's row may be there before this one's)."""
    until = time.monotonic() + 10
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            found = con.execute("SELECT * FROM request_log WHERE endpoint = ?", (endpoint,))
            rows = [row for row in map(dict, found) if where(row)]
        except sqlite3.OperationalError:
            rows = []
        finally:
            con.close()
        if len(rows) >= count:
            return rows
        assert time.monotonic() < until, f"{len(rows)} request_log rows for {endpoint}, wanted {count}"
        time.sleep(0.02)


# -- embeddings ---------------------------------------------------------------------------------------------


def test_embeddings_float(client: openai.OpenAI, upstream: FakeUpstream, gw: PortwayProcess) -> None:
    reply = client.embeddings.with_raw_response.create(
        model="emb", input=["hello world", "again"], encoding_format="float", dimensions=16
    )
    result = reply.parse()
    assert [d.embedding for d in result.data or []] == [vector("hello world", 16), vector("again", 16)]
    assert result.usage.prompt_tokens == 3 and result.model == "text-embedding-3-small"
    assert reply.headers["x-portway-provider"] == "a"
    sent = last(upstream, "/v1/embeddings")
    assert (sent.model, sent.key, sent.body and sent.body["dimensions"]) == (
        "text-embedding-3-small",
        "k-a",
        16,
    )
    assert log_rows(gw, "embeddings", 1, lambda r: r["prompt_tokens"] == 3 and r["status"] == 200)


def test_embeddings_base64_as_the_sdk_asks_by_default(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = client.embeddings.create(model="emb", input="one two three")  # the SDK asks base64, decodes it
    assert last(upstream, "/v1/embeddings").body["encoding_format"] == "base64"  # type: ignore[index]
    assert result.data[0].embedding == pytest.approx(vector("one two three", 8), abs=1e-6)


def test_embeddings_base64_is_relayed_as_the_upstream_encoded_it(gw: PortwayProcess) -> None:
    body = {"model": "emb", "input": [[1, 2, 3]], "encoding_format": "base64"}
    r = httpx.post(gw.base_url + "/embeddings", json=body, headers=gw.headers(), timeout=30)
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(vector([1, 2, 3], 8), abs=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == 3


def test_embeddings_fall_back_to_the_second_provider(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = client.embeddings.with_raw_response.create(
        model="emb-fallback", input="x", encoding_format="float"
    )
    assert reply.headers["x-portway-provider"] == "b"
    assert len(reply.parse().data[0].embedding) == 8
    tried = [(r.model, r.key) for r in upstream.requests if r.path == "/v1/embeddings"]
    assert tried[0] == ("emb@500", "k-a") and tried[-1] == ("text-embedding-3-small", "k-b")


# -- images -------------------------------------------------------------------------------------------------


def test_image_generation_b64(client: openai.OpenAI, upstream: FakeUpstream, gw: PortwayProcess) -> None:
    result = client.images.generate(
        model="img", prompt="an otter", n=2, size="256x256", response_format="b64_json"
    )
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in result.data or []]
    assert [im.format for im in images] == ["PNG", "PNG"]
    sent = last(upstream, "/v1/images/generations").body or {}
    assert (sent["model"], sent["response_format"], sent["n"]) == ("dall-e-2", "b64_json", 2)
    assert log_rows(gw, "image_generation", 1, lambda r: r["images"] == 2)


def test_image_generation_asks_b64_even_when_the_client_wants_a_url(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    result = client.images.generate(model="img", prompt="an otter", response_format="url")
    assert last(upstream, "/v1/images/generations").body["response_format"] == "b64_json"  # type: ignore[index]
    (image,) = result.data or []
    assert image.url and image.b64_json is None  # the service made the url


def test_image_generation_falls_back(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    reply = client.images.with_raw_response.generate(
        model="img-fallback", prompt="p", response_format="b64_json"
    )
    assert reply.headers["x-portway-provider"] == "b" and (reply.parse().data or [])[0].b64_json
    tried = [r.model for r in upstream.requests if r.path == "/v1/images/generations"]
    assert tried[0] == "img@500" and tried[-1] == "dall-e-2"


def test_image_edit_forwards_image_and_mask_as_multipart(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    image, mask = png(32, 32, (200, 10, 10, 255)), png(32, 32, (0, 0, 0, 0))
    result = client.images.edit(
        model="img", image=("otter.png", image, "image/png"), mask=("mask.png", mask, "image/png"),
        prompt="add a hat", n=1, response_format="b64_json",
    )  # fmt: skip
    assert Image.open(io.BytesIO(base64.b64decode((result.data or [])[0].b64_json or ""))).format == "PNG"
    sent = last(upstream, "/v1/images/edits")
    assert sent.body == {"model": "dall-e-2", "prompt": "add a hat", "n": "1", "response_format": "b64_json"}
    assert [(f.field, f.filename, f.content_type, f.size, f.sha256) for f in sent.files] == [
        ("image", "otter.png", "image/png", len(image), hashlib.sha256(image).hexdigest()),
        ("mask", "mask.png", "image/png", len(mask), hashlib.sha256(mask).hexdigest()),
    ]
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")


def test_image_edit_with_several_images(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    first, second = png(8, 8, (1, 2, 3, 255)), png(8, 8, (4, 5, 6, 255))
    client.images.edit(
        model="img", image=[("a.png", first, "image/png"), ("b.png", second, "image/png")], prompt="merge"
    )
    files = last(upstream, "/v1/images/edits").files
    assert [(f.field, f.filename, f.size) for f in files] == [
        ("image[]", "a.png", len(first)),
        ("image[]", "b.png", len(second)),
    ]


# -- speech -------------------------------------------------------------------------------------------------


def test_speech_is_relayed_as_the_upstream_produces_it(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    text = "Hello there"
    expected = wav(min(2.0, 0.1 + 0.02 * len(text)))  # what the fake says (3 chunks, 0.3 s apart)
    with client.audio.speech.with_streaming_response.create(
        model="tts-slow", voice="alloy", input=text, response_format="wav"
    ) as reply:
        assert reply.headers["content-type"] == "audio/wav"
        chunks = reply.iter_bytes()
        first = next(chunks)
        sent = last(upstream, "/v1/audio/speech")
        assert not sent.completed  # the client holds audio before the upstream sent its last chunk
        body = first + b"".join(chunks)
    assert body == expected and sent.completed
    assert sent.body == {
        "model": "tts-1@slowchunks:0.3",
        "voice": "alloy",
        "input": text,
        "response_format": "wav",
    }


def test_speech_default_format(client: openai.OpenAI, gw: PortwayProcess) -> None:
    reply = client.audio.speech.with_raw_response.create(model="tts", voice="alloy", input="Hi")
    assert reply.headers["content-type"] == "audio/mpeg" and reply.content.startswith(b"RIFF")
    assert log_rows(gw, "speech", 1, lambda r: r["characters"] == 2)


# -- transcription and translation --------------------------------------------------------------------------

AUDIO = wav(0.5)  # 16,000 bytes of samples and a header: the fake says 0.501 s
TEXT = f"Fake transcribe of talk.wav ({len(AUDIO)} bytes)"


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_transcription_formats(fmt: str, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result: Any = client.audio.transcriptions.create(
        model="stt",
        file=("talk.wav", AUDIO, "audio/wav"),
        response_format=fmt,
        language="en",  # type: ignore[call-overload]
    )
    if fmt == "json":
        assert result.text == TEXT
    elif fmt == "verbose_json":
        assert (result.text, result.duration, result.language) == (TEXT, 0.501, "english")
        assert len(result.segments) == 2
    elif fmt == "text":
        assert result.strip() == TEXT
    elif fmt == "srt":
        assert result.startswith("1\n00:00:00,000 --> 00:00:00,250\n") and "2\n00:00:00,250" in result
    else:
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.250\n")
    sent = last(upstream, "/v1/audio/transcriptions")
    assert sent.body == {"model": "whisper-1", "response_format": fmt, "language": "en"}
    assert [(f.field, f.size) for f in sent.files] == [("file", len(AUDIO))]


def test_transcription_seconds_are_recorded(client: openai.OpenAI, gw: PortwayProcess) -> None:
    client.audio.transcriptions.create(
        model="stt", file=("talk.wav", AUDIO, "audio/wav"), response_format="verbose_json"
    )
    assert log_rows(gw, "transcription", 1, lambda r: r["audio_seconds"] == pytest.approx(0.501))


def test_translation(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = client.audio.translations.create(model="stt", file=("talk.wav", AUDIO, "audio/wav"))
    assert result.text == TEXT.replace("transcribe", "translate")
    assert last(upstream, "/v1/audio/translations").files[0].size == len(AUDIO)


# -- a large upload -----------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def noise_wav(size: int) -> bytes:
    """A valid 16 kHz mono 16-bit WAV of `size` bytes of noise (random: nothing compresses or dedupes it)."""
    data = os.urandom(size - 44)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    head = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
    return head + b"data" + struct.pack("<I", len(data)) + data


def test_a_10_mib_upload_reaches_the_upstream_intact_without_portway_holding_it(
    client: openai.OpenAI, upstream: FakeUpstream, gw: PortwayProcess
) -> None:
    pid = gw.proc.pid
    small = noise_wav(MiB)  # warm every path (parsing, spooling, the upstream call) before measuring
    client.audio.transcriptions.create(model="stt", file=("warm.wav", small, "audio/wav"))
    audio = noise_wav(10 * MiB)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM (the peak RSS) to the current RSS
    before = _status_kib(pid, "VmRSS")
    result = client.audio.transcriptions.create(model="stt", file=("big.wav", audio, "audio/wav"))
    peak = _status_kib(pid, "VmHWM")
    assert result.text == f"Fake transcribe of big.wav ({len(audio)} bytes)"
    sent = last(upstream, "/v1/audio/transcriptions").files[0]
    assert (sent.size, sent.sha256) == (len(audio), hashlib.sha256(audio).hexdigest())
    # Holding the upload whole (reading it, or buffering it for the socket) costs 10 MiB or more at once.
    grown = (peak - before) * 1024
    assert grown < 4 * MiB, f"portway's peak RSS grew by {grown / MiB:.1f} MiB for a 10 MiB upload"


def test_an_upstream_400_comes_back_as_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="emb-bad", input="x")
    assert err.value.status_code == 400 and "Fake upstream rejected" in str(err.value)


# -- the provider against the fake directly: faults, streams and connections ---------------------------------


def _provider(up: FakeUpstream) -> tuple[OpenAICompatProvider, Transport]:
    transport = Transport()
    return OpenAICompatProvider(ProviderSettings("a", "openai", up.base_url), transport), transport


def _speech(model: str, timeout: float = 5.0) -> MediaCall:
    payload = {"model": "alias", "input": "Hello there", "voice": "alloy", "response_format": "wav"}
    return MediaCall(Task.SPEECH, payload, model, "k-a", timeout)


@pytest.mark.parametrize(
    ("model", "kind", "retry_after"),
    [("e@429:3", FailureKind.RATE_LIMIT, 3.0), ("e@503", FailureKind.SERVER, None),
     ("e@401", FailureKind.AUTH, None), ("e@garbage", FailureKind.BAD_RESPONSE, None),
     ("e@reset", FailureKind.CONNECTION, None), ("e@hang", FailureKind.TIMEOUT, None)],
)  # fmt: skip
async def test_faults_are_classified_as_for_chat(
    upstream: FakeUpstream, model: str, kind: FailureKind, retry_after: float | None
) -> None:
    provider, transport = _provider(upstream)
    call = MediaCall(Task.EMBEDDINGS, {"input": "x"}, model, "k-a", 0.5)
    with pytest.raises(UpstreamFailure) as err:
        await provider.media(call)
    assert (err.value.kind, err.value.retry_after) == (kind, retry_after)
    await transport.aclose()


async def test_speech_read_to_the_end_releases_its_connection_for_reuse(upstream: FakeUpstream) -> None:
    provider, transport = _provider(upstream)
    for _ in range(2):
        result = await provider.media(_speech("tts-1"))
        assert result.stream is not None and result.body is None
        audio = b"".join([chunk async for chunk in result.stream])
        assert audio == wav(min(2.0, 0.1 + 0.02 * len("Hello there")))
    (pool,) = transport._pools.values()
    assert pool.open == 1 and len(pool.idle) == 1  # one connection served both
    await transport.aclose()


async def test_speech_cut_mid_stream_fails_the_iteration(upstream: FakeUpstream) -> None:
    provider, transport = _provider(upstream)
    result = await provider.media(_speech("tts-1@cut"))  # the first bytes came: returned, committed
    assert result.stream is not None
    with pytest.raises(UpstreamFailure) as err:
        async for _ in result.stream:
            pass
    assert err.value.kind in (FailureKind.CONNECTION, FailureKind.BAD_RESPONSE)
    await transport.aclose()


async def test_speech_closed_early_closes_the_upstream_connection(upstream: FakeUpstream) -> None:
    provider, transport = _provider(upstream)
    result = await provider.media(_speech("tts-1@slowchunks:0.5"))
    await result.aclose()  # the client left before reading a byte
    await result.aclose()  # twice is fine
    assert await upstream.wait_for_async(lambda reqs: reqs and reqs[-1].disconnected, timeout=3)
    (pool,) = transport._pools.values()
    assert pool.open == 0
    await transport.aclose()


async def test_speech_that_never_starts_times_out_before_returning(upstream: FakeUpstream) -> None:
    provider, transport = _provider(upstream)
    started = time.monotonic()
    with pytest.raises(UpstreamFailure) as err:
        await provider.media(_speech("tts-1@hang", timeout=0.4))
    assert err.value.kind is FailureKind.TIMEOUT and time.monotonic() - started < 2
    await transport.aclose()
