"""Traces from a real portway to an in-process OTLP/HTTP collector: a span per request, a child per upstream
attempt, GenAI attributes, the caller's traceparent as the parent and each attempt's passed upstream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
MSGS = [{"role": "user", "content": "trace me"}]


class Collector:
    """Receives POST /v1/traces (protobuf) and keeps every span, as {attribute: value} plus ids."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                outer._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attrs = {a.key: _value(a.value) for a in span.attributes}
                    with self.lock:
                        self.spans.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "service": service,
                                "attrs": attrs,
                            }
                        )

    def wait_for(self, count: int, trace_id: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self.lock:
                found = [s for s in self.spans if s["trace_id"] == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{count} spans of trace {trace_id} did not arrive; got {found}")


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()


@pytest.fixture(scope="module")
def gw(
    upstream: FakeUpstream, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortwayProcess]:
    prov = {"type": "openai", "base_url": upstream.base_url}
    config = {
        "routing": {"deadline": 4, "backoff_base": 0.01, "backoff_max": 0.02, "breaker_threshold": 50},
        "providers": {"tr": {**prov, "api_keys": ["k-tr"]}, "tr2": {**prov, "api_keys": ["k-tr2"]}},
        "models": {"traced": ["tr/fake-model"], "fallback": ["tr/down-model@500", "tr2/fake-model"]},
        "tracing": {"enabled": True, "endpoint": collector.url, "service_name": "portway-test"},
    }
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # export within 50 ms instead of 5 s
    proc = PortwayProcess(tmp_path_factory.mktemp("tracing"), config, env=env)
    yield proc
    proc.stop()


def _chat(gw: PortwayProcess, model: str, traceparent: str | None = None) -> httpx.Response:
    headers = gw.headers()
    if traceparent:
        headers["traceparent"] = traceparent
    body = {"model": model, "messages": MSGS}
    return HTTP.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=20)


def test_request_span_parented_by_traceparent_with_attempt_child(
    gw: PortwayProcess, collector: Collector, upstream: FakeUpstream
) -> None:
    resp = _chat(gw, "traced", f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert resp.status_code == 200
    spans = collector.wait_for(2, TRACE_ID)
    (server,) = [s for s in spans if s["parent_id"] == PARENT_ID]
    (attempt,) = [s for s in spans if s["parent_id"] == server["span_id"]]
    assert server["service"] == "portway-test"
    assert server["name"] == "POST /v1/chat/completions"
    attrs = server["attrs"]
    assert attrs["gen_ai.system"] == "openai" and attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "traced" and attrs["gen_ai.response.model"] == "fake-model"
    usage = resp.json()["usage"]
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["http.response.status_code"] == 200
    assert attempt["attrs"]["gen_ai.request.model"] == "fake-model"
    assert attempt["attrs"]["portway.provider"] == "tr"
    # The upstream got the attempt's span as its parent: the trace continues there.
    (sent,) = [r for r in upstream.requests if r.key == "k-tr"]
    assert sent.headers["traceparent"] == f"00-{TRACE_ID}-{attempt['span_id']}-01"


def test_one_child_per_attempt_with_fallback(
    gw: PortwayProcess, collector: Collector, upstream: FakeUpstream
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert _chat(gw, "fallback", f"00-{trace_id}-b7ad6b7169203331-01").status_code == 200
    spans = collector.wait_for(4, trace_id)  # the request, two tries of tr (500 + retry), tr2
    (server,) = [s for s in spans if s["parent_id"] == "b7ad6b7169203331"]
    children = [s for s in spans if s["parent_id"] == server["span_id"]]
    assert sorted(c["attrs"]["portway.provider"] for c in children) == ["tr", "tr", "tr2"]
    failed = [c for c in children if c["attrs"]["portway.provider"] == "tr"]
    assert all(c["attrs"]["error.type"] == "server" for c in failed)
    assert server["attrs"]["portway.provider"] == "tr2" and server["attrs"]["portway.attempts"] == 3
    sent = sorted(r.headers["traceparent"] for r in upstream.requests)
    assert sent == sorted(f"00-{trace_id}-{c['span_id']}-01" for c in children)


def test_without_traceparent_a_new_trace(gw: PortwayProcess, collector: Collector) -> None:
    before = {s["trace_id"] for s in collector.spans}
    assert _chat(gw, "traced").status_code == 200
    until = time.monotonic() + 15
    while time.monotonic() < until:
        new = [s for s in list(collector.spans) if s["trace_id"] not in before and s["kind"] == 2]
        if new:
            assert new[0]["parent_id"] == ""  # a root span (SERVER kind)
            return
        time.sleep(0.05)
    raise AssertionError("no new trace arrived")
