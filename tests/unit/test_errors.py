"""One error renderer: every way out (ASGI, the server's raw bytes, FastAPI) sends what render() gives."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from starlette.middleware.cors import CORSMiddleware

from portway.api.middleware import AdmissionControl, BodyLimit
from portway.app import _render
from portway.errors import OVERLOADED, PortwayError, RateLimited, Rendered, send_error
from portway.http.server import _error_response

Messages = list[MutableMapping[str, Any]]


class Recorder:
    def __init__(self) -> None:
        self.messages: Messages = []

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])


def limited() -> RateLimited:
    return RateLimited("slow down", headers={"Retry-After": "7", "X-RateLimit-Limit-Requests": "5"})


def test_render_gives_status_json_headers_and_the_body() -> None:
    status, headers, body = limited().render()
    assert status == 429
    assert headers == [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"7"),
        (b"x-ratelimit-limit-requests", b"5"),
    ]
    assert orjson.loads(body)["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
        "param": None,
    }


async def test_asgi_raw_and_fastapi_answers_are_the_same_rendering() -> None:
    rendered = limited().render()
    sent = Recorder()
    await send_error(sent, limited())
    assert sent.messages == [
        {"type": "http.response.start", "status": 429, "headers": rendered.headers},
        {"type": "http.response.body", "body": rendered.body},
    ]
    raw = _error_response(limited())
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests" and body == rendered.body
    assert lines[1:] == [b"%s: %s" % h for h in rendered.headers] + [b"connection: close"]
    response = _render(limited())
    assert response.status_code == 429 and response.body == rendered.body
    assert response.raw_headers == rendered.headers


async def test_a_prerendered_answer_is_sent_with_a_fresh_header_list_each_time() -> None:
    # CORS adds its headers to the list it is sent: the shared rendering must not grow per request.
    async def busy(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached past capacity")

    door = AdmissionControl(busy, max_in_flight=0)
    app = CORSMiddleware(door, allow_origins=["*"])
    scope = {"type": "http", "path": "/v1/models", "method": "GET", "headers": [(b"origin", b"http://x")]}
    before = list(OVERLOADED.headers)
    for _ in range(2):
        sent = Recorder()
        await app(scope, _no_body, sent)
        assert sent.messages[0]["status"] == 503
        assert sent.headers[b"access-control-allow-origin"] == b"*"
    assert OVERLOADED.headers == before


async def test_the_overload_answer_says_when_to_retry_and_how_long_it_is() -> None:
    sent = Recorder()
    await AdmissionControl(_no_app, max_in_flight=0)({"type": "http", "path": "/v1/x"}, _no_body, sent)
    body = sent.messages[1]["body"]
    assert sent.headers[b"retry-after"] == b"1"
    assert sent.headers[b"content-length"] == str(len(body)).encode()  # not chunked
    assert orjson.loads(body)["error"]["code"] == "server_overloaded"


@pytest.mark.parametrize(("length", "status"), [(b"12", 413), (b"x", 400)], ids=["too-large", "not-a-number"])
async def test_body_limit_answers_with_the_renderer(length: bytes, status: int) -> None:
    sent = Recorder()
    scope = {"type": "http", "path": "/v1/x", "headers": [(b"content-length", length)]}
    await BodyLimit(_no_app, limit=10)(scope, _no_body, sent)
    body = sent.messages[1]["body"]
    assert sent.messages[0]["status"] == status
    assert sent.headers[b"content-length"] == str(len(body)).encode()
    assert sent.headers[b"content-type"] == b"application/json"


def test_rendered_is_a_plain_triple() -> None:
    r = PortwayError("boom").render()
    assert isinstance(r, Rendered) and r.status == 500 and r == (r.status, r.headers, r.body)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app is not called")
