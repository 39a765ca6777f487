"""The local provider's media tasks: embeddings (MiniLM), speech (piper joe), transcription (Whisper tiny.en).

Each task's engine is created on its first call, in the worker process that serves it (never before a fork,
never in a worker that does not use it), and loads its model then; transcription and translation share one
Whisper engine. Answers are OpenAI's shapes, named `<provider>/<model id>` as /v1/models lists them.

Translation: tiny.en knows English only, so a translation (to English) of English speech is its transcription,
rendered with `task: "translate"`; speech in another language comes back as whatever English it hears.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from portway.providers.base import FailureKind, UpstreamFailure
from portway.providers.local import embeddings, speech, transcription
from portway.providers.local.engine import MediaInputError
from portway.providers.media import MediaCall, MediaResult, MediaUnits, Task, Upload

JSON = "application/json"
MODEL_IDS: dict[Task, str] = {
    Task.EMBEDDINGS: embeddings.MODEL_ID,
    Task.SPEECH: speech.MODEL_ID,
    Task.TRANSCRIPTION: transcription.MODEL_ID,
    Task.TRANSLATION: transcription.MODEL_ID,
}
TASKS = frozenset(MODEL_IDS)


def input_failure(exc: MediaInputError) -> UpstreamFailure:
    """The client's bad field, as a 400 that names it (no fallback: another target would refuse it too)."""
    return UpstreamFailure(
        FailureKind.BAD_REQUEST, exc.message, status=400, error_code="validation_error", param=exc.param
    )


class LocalMedia:
    def __init__(self, provider_name: str, chat_model_id: str) -> None:
        self._name = provider_name
        self._chat_model_id = chat_model_id
        self._embeddings: embeddings.EmbeddingsEngine | None = None
        self._speech: speech.SpeechEngine | None = None
        self._transcription: transcription.TranscriptionEngine | None = None

    def served_id(self, task: Task) -> str:
        return f"{self._name}/{MODEL_IDS[task]}"

    def model_ids(self) -> list[str]:
        return sorted(set(MODEL_IDS.values()))

    async def serve(self, call: MediaCall) -> MediaResult:
        self._check_model(call)
        try:
            async with asyncio.timeout(call.timeout):
                if call.task is Task.EMBEDDINGS:
                    return await self._embed(call)
                if call.task is Task.SPEECH:
                    return await self._speak(call)
                return await self._transcribe(call)
        except MediaInputError as exc:
            raise input_failure(exc) from None
        except TimeoutError:
            raise UpstreamFailure(
                FailureKind.TIMEOUT, f"the local {call.task} model did not answer within {call.timeout:g}s"
            ) from None

    def _check_model(self, call: MediaCall) -> None:
        if call.task not in MODEL_IDS:
            raise NotImplementedError(f"the local provider serves no {call.task} calls")
        wanted = MODEL_IDS[call.task]
        if call.model == wanted:
            return
        if call.model in {*MODEL_IDS.values(), self._chat_model_id}:
            raise UpstreamFailure(
                FailureKind.BAD_REQUEST,
                f"{self._name}/{call.model} does not serve {call.task}: use {self._name}/{wanted}",
                status=400,
                error_code="model_not_supported_for_endpoint",
                param="model",
            )
        raise UpstreamFailure(
            FailureKind.BAD_REQUEST,
            f"the local provider does not serve model {call.model!r} for {call.task}: "
            f"it serves {self._name}/{wanted}",
            status=404,
            error_code="model_not_found",
            param="model",
        )

    async def _embed(self, call: MediaCall) -> MediaResult:
        if self._embeddings is None:
            self._embeddings = embeddings.EmbeddingsEngine()
        payload = call.payload
        dimensions = payload.get("dimensions")
        fmt = payload.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):  # refused before the model runs
            raise MediaInputError("encoding_format", "encoding_format must be float or base64")
        vectors, tokens = await self._embeddings.embed(payload.get("input"), dimensions)  # type: ignore[arg-type]
        body = embeddings.embeddings_body(vectors, self.served_id(call.task), tokens, fmt)
        return MediaResult(JSON, self.served_id(call.task), MediaUnits(prompt_tokens=tokens), body=body)

    async def _speak(self, call: MediaCall) -> MediaResult:
        if self._speech is None:
            self._speech = speech.SpeechEngine()
        payload = call.payload
        voice = payload.get("voice")
        if isinstance(voice, dict):  # OpenAI's {"id": ...} form of a voice
            voice = voice.get("id")
        request = speech.speech_request(
            payload.get("input"),  # type: ignore[arg-type]  # validated there
            voice,  # type: ignore[arg-type]
            payload.get("speed"),
            payload.get("response_format"),
        )
        chunks = self._speech.stream(request)
        try:
            first = await anext(chunks)  # the model is loaded and speaking: now the answer is committed
        except BaseException:
            await chunks.aclose()
            raise
        units = MediaUnits(characters=len(request.text))
        return MediaResult(
            request.content_type, self.served_id(call.task), units, stream=_chain(first, chunks)
        )

    async def _transcribe(self, call: MediaCall) -> MediaResult:
        if self._transcription is None:
            self._transcription = transcription.TranscriptionEngine()
        payload = call.payload
        upload = _audio(call.files)
        translate = call.task is Task.TRANSLATION
        fmt = payload.get("response_format") or "json"
        if fmt not in transcription.FORMATS:  # refused before the model runs
            raise MediaInputError(
                "response_format", f"response_format must be one of {transcription.FORMATS}"
            )
        result = await self._transcription.transcribe(
            upload.path,
            None if translate else _optional_str(payload, "language"),
            _optional_str(payload, "prompt"),
            _temperature(payload.get("temperature")),
        )
        body, content_type = transcription.render(
            result, fmt, task="translate" if translate else "transcribe"
        )
        units = MediaUnits(audio_seconds=result.duration)
        return MediaResult(content_type, self.served_id(call.task), units, body=body)

    async def aclose(self) -> None:
        for engine in (self._embeddings, self._speech, self._transcription):
            if engine is not None:
                await engine.aclose()


def _audio(files: list[Upload]) -> Upload:
    upload = next((f for f in files if f.field == "file"), files[0] if files else None)
    if upload is None:
        raise MediaInputError("file", "an audio file is required")
    return upload


def _optional_str(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise MediaInputError(name, f"{name} must be a string")
    return value


def _temperature(value: Any) -> float | None:
    """Multipart fields arrive as text: "0.2" is a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise MediaInputError("temperature", "temperature must be a number") from None
    return value  # type: ignore[no-any-return]


async def _chain(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """The first chunk (already produced, within the attempt's timeout), then the rest as it is made.
    Closing this stream closes the engine's, which sets the synthesis' cancel flag."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
