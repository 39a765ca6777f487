"""Chat completions: check the caller's limits, plan targets, run attempts, hand back bytes, record usage.

Usage is recorded for every outcome: success, refusal, upstream failure, a broken stream and a client
disconnect. Limits are settled exactly once per request: with the upstream's usage, with an estimate when
the upstream reported none (prompt from the request, completion from the text it delivered; recorded as
estimated), with the prompt alone when the request was cancelled during its upstream call, or released
when no upstream was called.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from portway.errors import PortwayError
from portway.identity.auth import Principal
from portway.limits.admission import Admission, Ticket
from portway.providers.base import ChatStream, Completion, UpstreamFailure, Usage, speaks_messages
from portway.providers.sse import error_event
from portway.routing.attempts import AttemptRunner, Outcome
from portway.routing.router import Router, Target
from portway.services.cache import ResponseCache
from portway.services.common import shielded
from portway.usage.cost import (
    body_text_chars,
    completion_tokens_estimate,
    prompt_tokens_estimate,
    text_chars,
)
from portway.usage.records import UsageRecord

if TYPE_CHECKING:
    from portway.services.history import HistoryService

log = logging.getLogger("portway.chat")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    started: float  # time.monotonic() at arrival
    client_ip: str | None = None
    body_bytes: int = 0
    endpoint: str = "chat"  # the request log's endpoint: chat, responses, messages, completions
    cache_mode: str | None = None  # the request's x-portway-cache header (force, skip)
    session: str | None = None  # chat history: the session the request names (services/history.py)
    prepend: bool | None = None  # x-portway-history: prepend (True) or off (False); None: history.prepend


@dataclass(slots=True)
class ChatReply:
    provider: str
    model: str
    body: bytes | None = None  # non-stream
    stream: AsyncGenerator[bytes, None] | None = None  # stream: SSE events
    headers: dict[str, str] | None = None  # x-ratelimit-* for the caller
    cache: str | None = None  # x-portway-cache: hit or miss (None: the response cache was not consulted)
    native: bool = False  # a /v1/messages request passed through: the provider's own Messages API answer
    cost: float | None = None  # x-portway-cost-usd (non-stream only: a stream's headers go before its usage)


class ChatService:
    def __init__(
        self,
        router: Router,
        runner: AttemptRunner,
        admission: Admission,
        record: Callable[[UsageRecord], None],
        cache: ResponseCache,
    ) -> None:
        self.router = router
        self.runner = runner
        self.admission = admission
        self.record = record
        self.cache = cache  # the response cache: per model (cache.enabled_for) or per key (its `cache`)
        self.history: HistoryService | None = None  # chat history, set by the runtime

    async def chat(
        self, payload: dict[str, Any], ctx: RequestContext, messages: dict[str, Any] | None = None
    ) -> ChatReply:
        """`messages`: the client's /v1/messages body, passed as it is to a target whose provider speaks
        Anthropic's Messages API (`speaks_messages`: the answer is then Anthropic's own bytes)."""
        if ctx.session is not None and self.history is not None:  # a None check when no session is named
            return await self.history.around(payload, ctx, messages, self.chat)
        model = payload["model"]
        stream = bool(payload.get("stream"))
        ticket = Ticket()
        calling: list[Target] | None = None  # the plan, once its upstream calls have begun
        key: str | None = None
        if self.cache.by_model or ctx.principal.cache:  # else no cache: two checks
            key = self.cache.key_for(payload, ctx)
        try:
            fallbacks = payload.get("models")
            self.admission.check_models(ctx.principal, [model, *(fallbacks or ())])
            targets = self.router.plan(model, fallbacks)
            ticket = await self.admission.admit(
                ctx.principal, ctx.client_ip, payload, ctx.body_bytes, targets
            )
            calling = targets
            if key is not None and (hit := await self._cache_hit(key, payload, ctx, ticket)) is not None:
                return hit
            if messages is None:
                outcome = await self.runner.run(targets, payload, stream)
            else:
                outcome = await self.runner.run_messages(targets, payload, messages, stream)
        except PortwayError as err:
            tried = sum(1 for a in err.extra.get("attempts", ()) if a.get("outcome") != "skipped")
            self._record(ctx, model, stream, err.status_code, error_code=err.code, attempts=tried)
            await self.admission.settle(ticket, None, 0.0)
            raise
        except BaseException as exc:  # cancelled before an answer (the client left), or a bug of ours
            await self._abandoned(ctx, model, stream, ticket, calling, exc)
            raise
        target = outcome.target
        # The cache holds chat completions: an answer in the provider's own Messages API shape is not kept.
        native = messages is not None and speaks_messages(self.runner.providers.get(target.provider))
        if isinstance(outcome.result, Completion):
            usage, estimated = outcome.result.usage, False
            if usage is None:  # rare: only then is the body searched for its text
                chars = body_text_chars(outcome.result.body)
                usage, estimated = _estimate(ctx, chars, 1 if chars else 0), True
            cost = self.admission.cost(target, usage)
            self._record(
                ctx, model, stream, 200, outcome=outcome, usage=usage, cost=cost, estimated=estimated
            )
            await self.admission.settle(ticket, usage, cost)
            body = outcome.result.body
            if key is not None and not estimated and not native:
                self.cache.store_completion(key, target, outcome.result.served_model, usage, body)
            miss = None if key is None else "miss"
            return ChatReply(
                target.provider,
                target.model,
                body=body,
                headers=ticket.headers,
                cache=miss,
                native=native,
                cost=cost,
            )
        # A chat job's result is a Completion or a ChatStream (MediaResults come from media jobs only).
        upstream = cast(ChatStream, outcome.result)
        relay = self._relay(upstream, outcome, model, ctx, ticket)
        if key is not None and not native:
            relay = self.cache.tee(relay, key, target, upstream)
        miss = None if key is None else "miss"
        return ChatReply(
            target.provider, target.model, stream=relay, headers=ticket.headers, cache=miss, native=native
        )

    async def _cache_hit(
        self, key: str, payload: dict[str, Any], ctx: RequestContext, ticket: Ticket
    ) -> ChatReply | None:
        """The stored answer, if there is one: recorded at $0 (`cache_hit`), its tokens still counted."""
        hit = await self.cache.get(key)
        if hit is None:
            return None
        stream = bool(payload.get("stream"))
        self.record(self.cache.hit_record(ctx, payload["model"], stream, hit))
        await self.admission.settle(ticket, hit.usage, 0.0)
        reply = ChatReply(hit.provider, hit.model, headers=ticket.headers, cache="hit")
        if stream:
            reply.stream = self.cache.replay(hit, payload)
        else:
            reply.body, reply.cost = hit.body, 0.0  # x-portway-cost-usd: 0
        return reply

    async def _abandoned(
        self,
        ctx: RequestContext,
        model: str,
        stream: bool,
        ticket: Ticket,
        calling: list[Target] | None,
        exc: BaseException,
    ) -> None:
        """Record first (synchronously), then settle: an upstream that had the prompt may bill it."""
        usage, cost = self.admission.prompt_spent(calling, ctx.body_bytes) if calling else (None, 0.0)
        gone = isinstance(exc, asyncio.CancelledError)
        self._record(
            ctx,
            model,
            stream,
            499 if gone else 500,
            usage=usage,
            error_code="client_disconnected" if gone else "internal_error",
            cost=cost,
            estimated=usage is not None,
        )
        await shielded(self.admission.settle(ticket, usage, cost))

    async def _relay(
        self, upstream: ChatStream, outcome: Outcome, model: str, ctx: RequestContext, ticket: Ticket
    ) -> AsyncGenerator[bytes, None]:
        """Pass events through; a mid-stream break becomes an SSE error event, never a silent truncation.

        The text of each event is counted (a few byte searches, well under a microsecond) so that a stream
        that ends without the upstream's usage (client gone first, cut, no stream usage) is still charged.
        """
        status, code = 200, None
        chars = chunks = 0
        first = 0.0  # monotonic time the first event was handed on (TTFT)
        try:
            async for event in upstream:
                n = text_chars(event)
                if n:
                    chars += n
                    chunks += 1
                if not first:
                    first = time.monotonic()
                yield event
        except UpstreamFailure as failure:
            status, code = 502, "upstream_error"
            log.warning("stream from %s broke mid-way: %s", outcome.target.id, failure.message)
            yield error_event(f"upstream stream interrupted: {failure.message}", "upstream_error", code)
        except BaseException:
            status, code = 499, "client_disconnected"  # the client went away: cancel upstream work
            raise
        finally:
            # Synchronous bookkeeping first: after a disconnect every await here may be cancelled again.
            outcome.release()
            usage = upstream.usage
            estimated = usage is None
            if usage is None:
                usage = _estimate(ctx, chars, chunks)
            cost = self.admission.cost(outcome.target, usage)
            self._record(
                ctx,
                model,
                True,
                status,
                outcome=outcome,
                usage=usage,
                error_code=code,
                cost=cost,
                estimated=estimated,
                ttft_ms=(first - ctx.started) * 1000 if first else 0.0,
            )
            await shielded(upstream.aclose(), self.admission.settle(ticket, usage, cost))

    def _record(
        self,
        ctx: RequestContext,
        model: str,
        stream: bool,
        status: int,
        *,
        outcome: Outcome | None = None,
        usage: Usage | None = None,
        error_code: str | None = None,
        attempts: int | None = None,
        cost: float = 0.0,
        estimated: bool = False,
        ttft_ms: float = 0.0,
    ) -> None:
        target = outcome.target if outcome else None
        self.record(
            UsageRecord(
                ts=time.time(),
                request_id=ctx.request_id,
                principal=ctx.principal.id,
                requested_model=model,
                provider=target.provider if target else None,
                served_model=outcome.result.served_model if outcome else None,
                status=status,
                latency_ms=(time.monotonic() - ctx.started) * 1000,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                stream=stream,
                attempts=len(outcome.attempts) if outcome and attempts is None else (attempts or 0),
                error_code=error_code,
                cost_usd=cost,
                usage_estimated=estimated,
                endpoint=ctx.endpoint,
                bytes_in=ctx.body_bytes,
                ttft_ms=ttft_ms,
                cached_tokens=usage.cached_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
            )
        )


def _estimate(ctx: RequestContext, chars: int, chunks: int) -> Usage:
    """Usage the upstream did not report: the prompt from the request, the completion from delivered text."""
    return Usage(prompt_tokens_estimate(ctx.body_bytes), completion_tokens_estimate(chars, chunks))
