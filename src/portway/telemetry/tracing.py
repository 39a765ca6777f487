"""Optional OpenTelemetry traces: one span per request, a child per upstream attempt, exported over OTLP/HTTP.

Off unless `tracing.enabled` is set in gateway.yaml, and a no-op (with one warning) when the `otel` extra is
not installed: OpenTelemetry is imported only by `Tracer.create`. Off, the gateway pays one None check per
request and per attempt, and one contextvar read per upstream call (`UPSTREAM_HEADERS`).

An incoming W3C `traceparent` (and `tracestate`) is the request span's parent; each attempt's span is passed
on to the upstream in its own `traceparent` through `UPSTREAM_HEADERS`, which the HTTP client adds to every
request it sends (http/client.py): one place for every provider. Attributes follow OpenTelemetry's GenAI
semantic conventions (gen_ai.operation.name, gen_ai.system, gen_ai.request.model, gen_ai.response.model,
gen_ai.usage.input_tokens, gen_ai.usage.output_tokens) and its HTTP ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from portway.telemetry.context import UPSTREAM_HEADERS

if TYPE_CHECKING:  # config imports the provider registry: a type only, below http
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from portway.config import TracingConfig

log = logging.getLogger("portway.telemetry")

T = TypeVar("T")
# The request log's endpoint -> GenAI operation name (semantic conventions' well-known values where one fits).
_OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "completions": "text_completion"}


class Record(Protocol):
    """What a request's usage record offers (usage.records.UsageRecord)."""

    endpoint: str
    status: int
    provider: str | None
    requested_model: str
    served_model: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    error_code: str | None
    cost_usd: float


def traces_endpoint(cfg: TracingConfig, env: Mapping[str, str] = os.environ) -> str:
    """The OTLP/HTTP traces URL: `tracing.endpoint`, else the standard environment variables."""
    if cfg.endpoint:
        base = cfg.endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    return env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"


class RequestSpan:
    """One request's span while it is the current one (so attempts and the usage record find it)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def end(self, status: int | None) -> None:
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
            if status >= 500:
                self.span.set_status(StatusCode.ERROR)
        self.span.end()
        context.detach(self.token)  # type: ignore[arg-type]


class Tracer:
    """The worker's tracer; build it with `create` (None when tracing is off or not installed)."""

    def __init__(self, provider: TracerProvider, systems: Mapping[str, str]) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("portway")
        self.systems = dict(systems)  # provider name -> gen_ai.system (its type: openai, anthropic, ...)
        self.propagator = TraceContextTextMapPropagator()

    @classmethod
    def create(cls, cfg: TracingConfig, systems: Mapping[str, str]) -> Tracer | None:
        if not cfg.enabled:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("tracing is enabled but OpenTelemetry is not installed (pip install 'portway[otel]')")
            return None
        # A provider of portway's own, not the global one: an embedding application keeps its tracing.
        provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
        exporter = OTLPSpanExporter(endpoint=traces_endpoint(cfg))
        provider.add_span_processor(BatchSpanProcessor(exporter))  # exports off the event loop, in batches
        return cls(provider, systems)

    def start_request(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> RequestSpan:
        """The request's span, parented by an incoming traceparent, made the current span."""
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return RequestSpan(span, context.attach(trace.set_span_in_context(span)))

    def on_record(self, r: Record) -> None:
        """The request's usage record (in the request's context): GenAI attributes on its span."""
        from opentelemetry import trace

        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATIONS.get(r.endpoint, r.endpoint),
            "gen_ai.request.model": r.requested_model,
            "gen_ai.usage.input_tokens": r.prompt_tokens,
            "gen_ai.usage.output_tokens": r.completion_tokens,
            "portway.attempts": r.attempts,
            "portway.cost_usd": r.cost_usd,
        }
        if r.provider is not None:
            attributes["gen_ai.system"] = self.systems.get(r.provider, r.provider)
            attributes["portway.provider"] = r.provider
        if r.served_model is not None:
            attributes["gen_ai.response.model"] = r.served_model
        if r.error_code is not None:
            attributes["error.type"] = r.error_code
        span.set_attributes(attributes)

    async def attempt(self, call: Awaitable[T], provider: str, model: str) -> T:
        """Run one upstream attempt inside its own span, passing the span on upstream (traceparent)."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, StatusCode

        span = self.tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.system": self.systems.get(provider, provider),
                "gen_ai.request.model": model,
                "portway.provider": provider,
            },
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        token = UPSTREAM_HEADERS.set(carrier)
        try:
            result = await call
        except BaseException as exc:
            kind = getattr(exc, "kind", None)  # an UpstreamFailure's FailureKind
            span.set_attribute("error.type", str(getattr(kind, "value", type(exc).__name__)))
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                span.set_attribute("http.response.status_code", status)
            span.set_status(StatusCode.ERROR)
            span.end()
            raise
        finally:
            UPSTREAM_HEADERS.reset(token)
        served = getattr(result, "served_model", None)
        if isinstance(served, str):
            span.set_attribute("gen_ai.response.model", served)
        span.end()
        return result

    async def aclose(self) -> None:
        import asyncio

        await asyncio.to_thread(self.provider.shutdown)  # flushes what is queued (a blocking export)
