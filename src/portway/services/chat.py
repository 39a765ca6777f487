"""Chat completions: plan targets, run attempts, hand back bytes, record usage.

Usage is recorded for every outcome: success, upstream failure, a broken stream and a client disconnect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from portway.errors import PortwayError
from portway.gateway.attempts import AttemptRunner, Outcome
from portway.gateway.router import Router
from portway.providers.base import ChatStream, Completion, UpstreamFailure, Usage
from portway.providers.sse import error_event
from portway.stores.records import UsageRecord

log = logging.getLogger("portway.chat")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: str
    started: float  # time.monotonic() at arrival


@dataclass(slots=True)
class ChatReply:
    provider: str
    model: str
    body: bytes | None = None  # non-stream
    stream: AsyncIterator[bytes] | None = None  # stream: SSE events


class ChatService:
    def __init__(self, router: Router, runner: AttemptRunner, record: Callable[[UsageRecord], None]) -> None:
        self.router = router
        self.runner = runner
        self.record = record

    async def chat(self, payload: dict[str, Any], ctx: RequestContext) -> ChatReply:
        model = payload["model"]
        stream = bool(payload.get("stream"))
        try:
            targets = self.router.plan(model, payload.get("models"))
            outcome = await self.runner.run(targets, payload, stream)
        except PortwayError as err:
            tried = sum(1 for a in err.extra.get("attempts", ()) if a.get("outcome") != "skipped")
            self._record(ctx, model, None, stream, err.status_code, None, err.code, tried)
            raise
        target = outcome.target
        if isinstance(outcome.result, Completion):
            res = outcome.result
            self._record(ctx, model, outcome, stream, 200, res.usage, None, len(outcome.attempts))
            return ChatReply(target.provider, target.model, body=res.body)
        return ChatReply(
            target.provider, target.model, stream=self._relay(outcome.result, outcome, model, ctx)
        )

    async def _relay(
        self, upstream: ChatStream, outcome: Outcome, model: str, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        """Pass events through; a mid-stream break becomes an SSE error event, never a silent truncation."""
        status, code = 200, None
        try:
            async for event in upstream:
                yield event
        except UpstreamFailure as failure:
            status, code = 502, "upstream_error"
            log.warning("stream from %s broke mid-way: %s", outcome.target.id, failure.message)
            yield error_event(f"upstream stream interrupted: {failure.message}", "upstream_error", code)
        except BaseException:
            status, code = 499, "client_disconnected"  # the client went away: cancel upstream work
            raise
        finally:
            await upstream.aclose()
            outcome.release()
            self._record(ctx, model, outcome, True, status, upstream.usage, code, len(outcome.attempts))

    def _record(
        self,
        ctx: RequestContext,
        model: str,
        outcome: Outcome | None,
        stream: bool,
        status: int,
        usage: Usage | None,
        error_code: str | None,
        attempts: int,
    ) -> None:
        target = outcome.target if outcome else None
        served = None
        if outcome is not None:
            served = getattr(outcome.result, "served_model", None) or (target.model if target else None)
        self.record(
            UsageRecord(
                ts=time.time(),
                request_id=ctx.request_id,
                principal=ctx.principal,
                requested_model=model,
                provider=target.provider if target else None,
                served_model=served,
                status=status,
                latency_ms=(time.monotonic() - ctx.started) * 1000,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                stream=stream,
                attempts=attempts,
                error_code=error_code,
            )
        )
