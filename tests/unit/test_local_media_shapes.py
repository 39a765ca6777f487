"""The pure parts of the local media engines (no model needed): renderers, headers, validation, the engine."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import logging
import struct
import threading
import wave
from collections.abc import Iterator

import orjson
import pytest

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local.embeddings import check_dimensions, encode_base64, normalize_input, truncate
from portway.providers.local.engine import LocalEngine, MediaInputError
from portway.providers.local.speech import speech_request, wav_header
from portway.providers.local.transcription import (
    Segment,
    Transcription,
    check_language,
    render,
    temperature_schedule,
    timestamp,
)

RESULT = Transcription(
    text="Hello there. General Kenobi.",
    language="en",
    duration=3661.2,
    segments=(
        Segment(id=0, start=0.0, end=1.5, text=" Hello there."),
        Segment(id=1, start=3659.9996, end=3661.2, text=" General Kenobi."),
    ),
)


# --- transcription renderers ---------------------------------------------------------------------------


def test_timestamps_round_to_the_millisecond_and_carry() -> None:
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(1.2344, ".") == "00:00:01.234"
    assert timestamp(1.2346, ".") == "00:00:01.235"
    assert timestamp(59.9996, ",") == "00:01:00,000"  # rounding carries into the minutes
    assert timestamp(3661.2, ".") == "01:01:01.200"
    assert timestamp(360_000.0, ",") == "100:00:00,000"
    assert timestamp(-0.01, ",") == "00:00:00,000"


def test_srt() -> None:
    body, content_type = render(RESULT, "srt")
    assert content_type.startswith("text/plain")
    assert body.decode() == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n01:01:00,000 --> 01:01:01,200\nGeneral Kenobi.\n\n"
    )


def test_vtt() -> None:
    body, _ = render(RESULT, "vtt")
    assert body.decode() == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "01:01:00.000 --> 01:01:01.200\nGeneral Kenobi.\n\n"
    )


def test_no_segments() -> None:
    empty = Transcription(text="", language="en", duration=0.0)
    assert render(empty, "srt")[0] == b""
    assert render(empty, "vtt")[0] == b"WEBVTT\n\n"
    assert orjson.loads(render(empty, "json")[0]) == {"text": "", "usage": {"type": "duration", "seconds": 0}}


def test_json_text_and_verbose_json() -> None:
    body, content_type = render(RESULT, None)
    assert content_type == "application/json"
    assert orjson.loads(body) == {"text": RESULT.text, "usage": {"type": "duration", "seconds": 3662}}
    assert render(RESULT, "text") == (b"Hello there. General Kenobi.\n", "text/plain; charset=utf-8")
    verbose = orjson.loads(render(RESULT, "verbose_json", task="translate")[0])
    assert verbose["task"] == "translate"
    assert verbose["language"] == "english"
    assert verbose["duration"] == 3661.2
    assert [s["id"] for s in verbose["segments"]] == [0, 1]
    assert set(verbose["segments"][0]) >= {"id", "seek", "start", "end", "text", "tokens", "avg_logprob"}


def test_unknown_format_names_response_format() -> None:
    with pytest.raises(MediaInputError) as caught:
        render(RESULT, "docx")
    assert caught.value.param == "response_format"


def test_language_and_temperature() -> None:
    for ok in (None, "", "en", "EN", "english"):
        check_language(ok)
    with pytest.raises(MediaInputError) as caught:
        check_language("de")
    assert caught.value.param == "language"
    assert temperature_schedule(None)[0] == 0.0 and len(temperature_schedule(0)) > 1
    assert temperature_schedule(0.3) == (0.3,)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(MediaInputError) as caught:
            temperature_schedule(bad)
        assert caught.value.param == "temperature"


# --- speech ---------------------------------------------------------------------------------------------


def test_wav_header_decodes_with_the_wave_module() -> None:
    samples = struct.pack("<4h", 0, 1000, -1000, 0)
    with wave.open(io.BytesIO(wav_header(len(samples)) + samples)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 22_050)
        assert reader.getnframes() == 4
        assert reader.readframes(4) == samples
    with wave.open(io.BytesIO(wav_header(None) + samples)) as streamed:  # length unknown while streaming
        assert streamed.readframes(10**6) == samples


def test_speech_request_validation() -> None:
    request = speech_request("Hi.", "Alloy", None, "wav")
    assert (request.voice, request.speed, request.content_type) == ("alloy", 1.0, "audio/wav")
    if importlib.util.find_spec("av") is not None:  # mp3 (OpenAI's default format) needs PyAV
        assert speech_request("Hi.", "alloy", None, None).content_type == "audio/mpeg"
    for voice in ("ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"):
        speech_request("Hi.", voice, 1.0, "wav")
    cases = [
        (("", "alloy", 1.0, "wav"), "input"),
        (("x" * 4097, "alloy", 1.0, "wav"), "input"),
        (("Hi.", "darth", 1.0, "wav"), "voice"),
        (("Hi.", "alloy", 0.2, "wav"), "speed"),
        (("Hi.", "alloy", 4.5, "wav"), "speed"),
        (("Hi.", "alloy", 1.0, "ogg"), "response_format"),
    ]
    for args, param in cases:
        with pytest.raises(MediaInputError) as caught:
            speech_request(*args)
        assert caught.value.param == param, args


# --- embeddings -----------------------------------------------------------------------------------------


def test_embedding_inputs() -> None:
    assert normalize_input("a") == ["a"]
    assert normalize_input(["a", "b"]) == ["a", "b"]
    assert normalize_input([1, 2, 3]) == [[1, 2, 3]]
    assert normalize_input([[1, 2], [3]]) == [[1, 2], [3]]
    for bad in ([], [[]], ["a", 1], [True], [-1], {"a": 1}, None, ["a"] * 2049):
        with pytest.raises(MediaInputError) as caught:
            normalize_input(bad)
        assert caught.value.param == "input"


def test_dimensions() -> None:
    check_dimensions(None)
    check_dimensions(384)
    for bad in (0, 385, True, 1.5):
        with pytest.raises(MediaInputError) as caught:
            check_dimensions(bad)  # type: ignore[arg-type]
        assert caught.value.param == "dimensions"
    short = truncate([0.6, 0.0, 0.8, 0.0], 1)
    assert short == [1.0]
    assert truncate([0.6, 0.8], None) == [0.6, 0.8]


def test_base64_is_little_endian_float32() -> None:
    encoded = encode_base64([1.0, -2.5])
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (1.0, -2.5)


# --- the engine: lazy single load, the concurrency bound, cancellation, errors -----------------------


async def test_engine_loads_once_lazily_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return "model"

    engine: LocalEngine[str] = LocalEngine("demo", load, max_concurrency=2)
    assert not engine.loaded and not loads
    with caplog.at_level(logging.INFO, logger="portway.local"):
        results = await asyncio.gather(*(engine.run(lambda m, _c: m.upper()) for _ in range(5)))
    assert results == ["MODEL"] * 5
    assert loads == [1]
    assert any("local demo model ready in" in r.getMessage() for r in caplog.records)
    await engine.aclose()


async def test_engine_bounds_concurrency_and_cancel_keeps_the_slot_until_the_thread_ends() -> None:
    engine: LocalEngine[None] = LocalEngine("demo", lambda: None, max_concurrency=1)
    release = threading.Event()
    started = threading.Event()

    def slow(_m: None, cancel: threading.Event) -> str:
        started.set()
        release.wait(5)
        return "slow"

    first = asyncio.create_task(engine.run(slow))
    await asyncio.to_thread(started.wait, 5)
    second = asyncio.create_task(engine.run(lambda _m, _c: "fast"))
    await asyncio.sleep(0.05)
    assert not second.done() and engine.running == 1  # waits for the one slot
    first.cancel()  # the request gives up, but its thread still holds the model
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.05)
    assert not second.done()
    release.set()
    assert await second == "fast"
    assert engine.peak == 1
    await engine.aclose()


async def test_engine_errors() -> None:
    def bad_input(_m: None, _c: threading.Event) -> None:
        raise MediaInputError("voice", "no such voice")

    def crash(_m: None, _c: threading.Event) -> None:
        raise RuntimeError("secret /path details")

    engine: LocalEngine[None] = LocalEngine("demo", lambda: None)
    with pytest.raises(MediaInputError):
        await engine.run(bad_input)
    with pytest.raises(UpstreamFailure) as caught:
        await engine.run(crash)
    assert caught.value.kind is FailureKind.SERVER and "secret" not in caught.value.message
    await engine.aclose()
    with pytest.raises(UpstreamFailure) as caught:
        await engine.run(lambda _m, _c: None)
    assert caught.value.kind is FailureKind.CONNECTION


async def test_failed_load_is_a_connection_failure_and_is_retried() -> None:
    attempts: list[int] = []

    def load() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("weights missing")
        return "ok"

    engine: LocalEngine[str] = LocalEngine("demo", load)
    with pytest.raises(UpstreamFailure) as caught:
        await engine.warm()
    assert caught.value.kind is FailureKind.CONNECTION
    assert await engine.run(lambda m, _c: m) == "ok"
    await engine.aclose()


async def test_stream_yields_as_produced_and_stops_the_thread_when_closed() -> None:
    engine: LocalEngine[None] = LocalEngine("demo", lambda: None)
    produced: list[int] = []
    gate = threading.Event()

    def chunks(_m: None, cancel: threading.Event) -> Iterator[int]:
        for n in range(100):
            produced.append(n)
            yield n
            if n == 0:
                gate.wait(5)  # the consumer has item 0 before item 1 exists

    stream = engine.stream(chunks)
    assert await anext(stream) == 0
    assert produced == [0]
    await stream.aclose()  # the client left
    gate.set()
    for _ in range(100):
        if engine.running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.running == 0
    assert len(produced) < 100
    await engine.aclose()


async def test_stream_error_reaches_the_consumer() -> None:
    engine: LocalEngine[None] = LocalEngine("demo", lambda: None)

    def chunks(_m: None, _c: threading.Event) -> Iterator[bytes]:
        yield b"a"
        raise ValueError("boom")

    got: list[bytes] = []
    with pytest.raises(UpstreamFailure):
        async for chunk in engine.stream(chunks):
            got.append(chunk)
    assert got == [b"a"]
    await engine.aclose()
