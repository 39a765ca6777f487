"""The media side of the provider seam: embeddings, images, speech, transcription and video.

A media call goes through the same attempt loop as chat (aliases, fallback chains, key pools, one deadline,
breakers): the loop hands a provider one `MediaCall` per attempt and gets a `MediaResult` back, or an
`UpstreamFailure` classified like chat's. The payload is the client's request in OpenAI's shape (already
validated by the API); every provider answers in OpenAI's shape too, so the API renders one format whoever
served. `units` is what the call spent, for limits, pricing and the usage record.

A provider lists the tasks it serves in `BaseProvider.tasks`; the media service skips targets whose provider
cannot serve the task (and answers 400 `model_not_supported_for_endpoint` when none can).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Task(enum.StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"  # POST /v1/embeddings
    IMAGE_GENERATION = "image_generation"  # POST /v1/images/generations
    IMAGE_EDIT = "image_edit"  # POST /v1/images/edits (multipart)
    SPEECH = "speech"  # POST /v1/audio/speech
    TRANSCRIPTION = "transcription"  # POST /v1/audio/transcriptions (multipart)
    TRANSLATION = "translation"  # POST /v1/audio/translations (multipart)
    VIDEO = "video"  # POST /v1/videos (a job: the call itself waits for the upstream's result)


@dataclass(slots=True)
class Upload:
    """A file of a multipart request, spooled to disk by the API (never whole in memory) and removed by it
    after the call, also when the client disconnects."""

    field: str  # the multipart field: "image", "image[]", "mask", "file", "input_reference"
    filename: str
    content_type: str
    path: Path
    size: int


@dataclass(slots=True)
class MediaCall:
    """One attempt at one target. `payload` holds the request's JSON fields (multipart text fields for
    uploads) in OpenAI's names; the provider sets `model` to the target's own model id."""

    task: Task
    payload: dict[str, Any]
    model: str
    key: str | None
    timeout: float  # seconds for the whole answer (a streamed one: until its first bytes)
    files: list[Upload] = field(default_factory=list)


@dataclass(slots=True)
class MediaUnits:
    """What a media call spent, in the units pricing charges for."""

    prompt_tokens: int = 0  # embeddings
    images: int = 0  # image generations and edits
    image_size: str | None = None  # "1024x1024": image prices are per size
    characters: int = 0  # speech input
    audio_seconds: float = 0.0  # transcription / translation input
    video_seconds: float = 0.0  # generated video


@dataclass(slots=True)
class MediaResult:
    """An answer in OpenAI's shape: JSON (embeddings, images, transcription json) or bytes (speech, a
    transcription as text/srt/vtt, video content). A binary answer may be a `stream` of chunks, relayed
    as produced; the key's in-flight slot is held until it is closed."""

    content_type: str
    served_model: str
    units: MediaUnits = field(default_factory=MediaUnits)
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    status: int = 200

    async def aclose(self) -> None:
        """Stop a stream early (the client left): its producer is cancelled. Safe to call twice."""
        closer = getattr(self.stream, "aclose", None)
        if closer is not None:
            await closer()
