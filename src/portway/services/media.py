"""Media requests (embeddings, images, speech, transcription, video): the chat machinery for other tasks.

One path for every task: allowed models, the router's plan (targets whose provider cannot serve the task
dropped: none left is 400 `model_not_supported_for_endpoint`), admission (a reservation from an estimate of
the units: input characters / 4 for embeddings, `n` images of `size`, the speech input's characters, the
audio's length guessed from its size, the video's seconds), the attempt loop (`run_job`: one deadline, key
pools, retries, breakers, fallback), the cost of the units the provider reports, one usage record and one
settlement, for success, refusal, failure and a client disconnect alike (like chat, a request cancelled
during its upstream call is charged what was reserved for it: the upstream may have done the work).

Images asked for as `response_format=url` are kept in the file store and answered with a signed URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from portway.errors import ModelNotSupportedForEndpoint, PortwayError
from portway.identity.auth import Principal
from portway.limits.admission import Admission, Ticket
from portway.providers.base import Provider, UpstreamFailure, Usage
from portway.providers.media import MediaResult, MediaUnits, Task, Upload
from portway.routing.attempts import AttemptRunner, MediaJob, Outcome
from portway.routing.router import Router, Target
from portway.services.chat import RequestContext
from portway.services.common import shielded
from portway.usage.cost import Pricing, estimate_units
from portway.usage.records import UsageRecord

log = logging.getLogger("portway.media")

# Audio's length is not known before it is decoded: reserve as if it were 128 kbit/s (MP3's usual rate;
# WAV is longer per byte, so its reservation is high, and settled with the real seconds after).
_DEFAULT_VIDEO_SECONDS = 4.0  # OpenAI's default `seconds` for a video
_AUDIO_TASKS = frozenset({Task.TRANSCRIPTION, Task.TRANSLATION})
_IMAGE_TASKS = frozenset({Task.IMAGE_GENERATION, Task.IMAGE_EDIT})
_STREAMED = frozenset({Task.SPEECH})  # answers relayed as produced: only their first bytes are bounded


class FileStore(Protocol):
    """The signed-file store (stores/files.py) as far as the media service uses it."""

    def save(self, data: bytes, content_type: str, owner: str, suffix: str) -> str: ...

    def signed_path(self, file_id: str) -> str: ...


@dataclass(slots=True)
class MediaReply:
    provider: str
    model: str
    content_type: str
    body: bytes | None = None  # the whole answer
    stream: AsyncGenerator[bytes, None] | None = None  # or its chunks, relayed as produced (speech)
    headers: dict[str, str] | None = None  # x-ratelimit-* for the caller
    cost: float | None = None  # x-portway-cost-usd (a whole answer only)


class MediaService:
    def __init__(
        self,
        router: Router,
        runner: AttemptRunner,
        admission: Admission,
        pricing: Pricing,
        record: Callable[[UsageRecord], None],
        files: FileStore | None = None,
    ) -> None:
        self.router = router
        self.runner = runner
        self.admission = admission
        self.pricing = pricing
        self.record = record
        self.files = files

    async def run(
        self,
        task: Task,
        model: str,
        payload: dict[str, Any],
        files: list[Upload],
        ctx: RequestContext,
        *,
        base_url: str = "",  # makes signed image URLs absolute (the request's own base URL)
    ) -> MediaReply:
        call = _Call(task, model, ctx, estimate_units(task, payload, sum(f.size for f in files)))
        ticket = Ticket()
        outcome = await self._call(call, payload, files, ticket)
        result, target = outcome.result, outcome.target
        assert isinstance(result, MediaResult)  # a media job's result
        if task in _AUDIO_TASKS and not result.units.audio_seconds:
            # The answer carried no duration (a `text` transcription): charge what the upload suggests.
            result.units.audio_seconds = call.estimate.audio_seconds
        reply = MediaReply(target.provider, target.model, result.content_type, headers=ticket.headers)
        if result.stream is not None:
            reply.stream = self._relay(result, outcome, call, ticket)
            return reply
        try:
            body = result.body or b""
            if task in _IMAGE_TASKS and payload.get("response_format") == "url":
                body = await self._as_urls(body, ctx.principal, base_url)
        except BaseException:
            self._record(call, 500, outcome=outcome, error_code="internal_error")
            await shielded(self.admission.settle(ticket, _usage(result.units), 0.0))
            raise
        cost = self.pricing.media_cost(target.id, result.units)
        self._record(call, result.status, outcome=outcome, cost=cost, bytes_out=len(body))
        await self.admission.settle(ticket, _usage(result.units), cost)
        reply.body, reply.cost = body, cost
        return reply

    async def _call(
        self, call: _Call, payload: dict[str, Any], files: list[Upload], ticket: Ticket
    ) -> Outcome:
        """Admit and run the attempts; a request that ends here is recorded and settled here.

        `ticket` is filled in place, so the caller settles what admission took once the answer is known.
        """
        ctx, units = call.ctx, call.estimate
        calling: list[Target] | None = None  # the plan, once its upstream calls have begun
        try:
            self.admission.check_models(ctx.principal, [call.model])
            targets = self._servable(call.task, call.model)
            estimate = self.pricing.media_estimate([t.id for t in targets], units)
            taken = await self._admit(ctx, units.prompt_tokens, estimate)
            ticket.reservation, ticket.headers = taken.reservation, taken.headers
            calling = targets
            job = MediaJob(call.task, payload, files, call.task in _STREAMED)
            return await self.runner.run_job(targets, job)
        except PortwayError as err:
            tried = sum(1 for a in err.extra.get("attempts", ()) if a.get("outcome") != "skipped")
            self._record(call, err.status_code, error_code=err.code, attempts=tried)
            await self.admission.settle(ticket, None, 0.0)
            raise
        except BaseException as exc:  # cancelled before an answer (the client left), or a bug of ours
            cost = self.pricing.media_estimate([t.id for t in calling], units) if calling else 0.0
            gone = isinstance(exc, asyncio.CancelledError)
            code = "client_disconnected" if gone else "internal_error"
            self._record(call, 499 if gone else 500, error_code=code, cost=cost, spent=bool(calling))
            await shielded(self.admission.settle(ticket, _usage(units) if calling else None, cost))
            raise

    def _servable(self, task: Task, model: str) -> list[Target]:
        """The plan without the targets whose provider cannot serve `task`."""
        targets = self.router.plan(model)
        providers: dict[str, Provider] = dict(self.runner.providers)
        servable = [t for t in targets if task in providers[t.provider].tasks]
        if targets and not servable:
            raise ModelNotSupportedForEndpoint(
                f"The model {model!r} cannot serve {task.value} requests", param="model"
            )
        return servable

    async def _admit(self, ctx: RequestContext, tokens: int, cost: float) -> Ticket:
        """Reserve the estimate against every limit that applies (chat's admission and limit plans)."""
        return await self.admission.reserve(ctx.principal, ctx.client_ip, tokens=tokens, cost=cost)

    async def _relay(
        self, result: MediaResult, outcome: Outcome, call: _Call, ticket: Ticket
    ) -> AsyncGenerator[bytes, None]:
        """Pass chunks through; the key's slot, the record and the settlement wait for the stream's end."""
        assert result.stream is not None
        status, code, sent = result.status, None, 0
        try:
            async for chunk in result.stream:
                sent += len(chunk)
                yield chunk
        except UpstreamFailure as failure:
            # Bytes have gone out with a 200: the answer can only be cut short (the client sees a short body).
            status, code = 502, "upstream_error"
            log.warning("%s stream from %s broke mid-way: %s", call.task, outcome.target.id, failure.message)
        except BaseException:
            status, code = 499, "client_disconnected"
            raise
        finally:
            # Synchronous bookkeeping first: after a disconnect every await here may be cancelled again.
            outcome.release()
            cost = self.pricing.media_cost(outcome.target.id, result.units)
            self._record(call, status, outcome=outcome, error_code=code, cost=cost, bytes_out=sent)
            await shielded(result.aclose(), self.admission.settle(ticket, _usage(result.units), cost))

    async def _as_urls(self, body: bytes, principal: Principal, base_url: str) -> bytes:
        """Keep each b64 image in the file store and answer its signed URL instead."""
        if self.files is None:
            raise PortwayError("response_format=url needs the file store, which is not configured")
        answer = orjson.loads(body)
        for item in answer.get("data") or ():
            encoded = item.pop("b64_json", None)
            if not isinstance(encoded, str):
                continue
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise PortwayError("the upstream answered an image that is not base64") from None
            ctype, suffix = image_type(data)
            file_id = await asyncio.to_thread(self.files.save, data, ctype, principal.id, suffix)
            item["url"] = base_url.rstrip("/") + self.files.signed_path(file_id)
        return orjson.dumps(answer)

    def _record(
        self,
        call: _Call,
        status: int,
        *,
        outcome: Outcome | None = None,
        error_code: str | None = None,
        attempts: int | None = None,
        cost: float = 0.0,
        bytes_out: int = 0,
        spent: bool = False,  # cancelled mid-call: record the estimated units, as they were charged
    ) -> None:
        ctx, target = call.ctx, outcome.target if outcome else None
        result = outcome.result if outcome else None
        units = call.estimate if spent else MediaUnits()
        if isinstance(result, MediaResult):
            units = result.units
        self.record(
            UsageRecord(
                ts=time.time(),
                request_id=ctx.request_id,
                principal=ctx.principal.id,
                requested_model=call.model,
                provider=target.provider if target else None,
                served_model=result.served_model if result else None,
                status=status,
                latency_ms=(time.monotonic() - ctx.started) * 1000,
                prompt_tokens=units.prompt_tokens,
                stream=call.task in _STREAMED,
                attempts=len(outcome.attempts) if outcome and attempts is None else (attempts or 0),
                error_code=error_code,
                cost_usd=cost,
                usage_estimated=spent,
                endpoint=call.task.value,
                bytes_in=ctx.body_bytes,
                bytes_out=bytes_out,
                images=units.images,
                characters=units.characters,
                audio_seconds=units.audio_seconds,
                video_seconds=units.video_seconds,
            )
        )


@dataclass(slots=True)
class _Call:
    """What the record of one media request needs besides its outcome."""

    task: Task
    model: str
    ctx: RequestContext
    estimate: MediaUnits


def _usage(units: MediaUnits) -> Usage:
    """Tokens for the token limits (tpm): embeddings have them, other tasks count only as requests."""
    return Usage(units.prompt_tokens, 0)


def image_type(data: bytes) -> tuple[str, str]:
    """(content type, suffix) of an encoded image, from its magic bytes (PNG unless told otherwise)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return "image/png", ".png"
